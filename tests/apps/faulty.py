"""The hello app with faults forced inside the agent: its responses must not change."""

from hello import app  # noqa: F401

from fastapi_doctor import _agent
from fastapi_doctor.middleware import RequestMetrics


def broken_attributes(self, *args, **kwargs):
    raise RuntimeError("forced failure inside the agent")


def faulty_hook(state):
    raise ZeroDivisionError("forced failure in a signal hook")


RequestMetrics.attributes = broken_attributes
_agent.get().request_metrics.finished_hooks.append(faulty_hook)
