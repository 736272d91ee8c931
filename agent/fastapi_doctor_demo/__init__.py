"""The demo: a patient app with one bug per root cause, and the runner that shows the agent finding them.

A package of its own in the agent's distribution: the agent never imports it (its ``demo`` command
comes through the ``fastapi_doctor.commands`` entry point, ``command.py``). Installed, it sits in
site-packages like a library, so it tells attribution that its code is the app's.
"""

import os

from fastapi_doctor import attribution

attribution.count_as_app(os.path.dirname(os.path.abspath(__file__)))
