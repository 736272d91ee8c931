"""The demo: a patient app with one bug per root cause, and the runner that shows the agent finding them.

It ships inside the agent's distribution, so it tells attribution that its code is the app's (the
agent's own frames are never blamed).
"""

import os

from fastapi_doctor import attribution

attribution.count_as_app(os.path.dirname(os.path.abspath(__file__)))
