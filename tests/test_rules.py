"""Rules as functions of observations (no server, no clock but the one given): both sides of each
threshold, and what is never a finding."""

from __future__ import annotations

import dataclasses

from fastapi_doctor.diagnosis import task_leak
from fastapi_doctor.findings import Location

WHERE = Location("app/orders.py", 42, "notify")


def creator(**changes: object) -> task_leak.CreatorObservation:
    base = task_leak.CreatorObservation(
        coroutine="wait_for_delivery", location=WHERE, created=0, alive=0, oldest_age_s=0.0, outlived=0, aged=0,
        destroyed_pending=0, never_retrieved=0, growth_per_minute=0.0, method="POST",
        route="/orders/{order_id}/notify", routes=("POST /orders/{order_id}/notify",),
    )
    return dataclasses.replace(base, **changes)


def test_tasks_pending_past_the_limit_after_their_request_are_a_leak() -> None:
    before = creator(created=40, alive=40, outlived=40, oldest_age_s=29.0, growth_per_minute=80.0)
    now = dataclasses.replace(before, aged=3, oldest_age_s=31.0)
    verdict = task_leak.decide(now, before, leak_seconds=30.0)
    assert verdict is not None
    assert (verdict.root_cause, verdict.method, verdict.route, verdict.location) == (
        "task_leak", "POST", "/orders/{order_id}/notify", WHERE)
    assert verdict.evidence["reason"] == "outlived_request"
    assert verdict.evidence["alive"] == 40
    assert verdict.evidence["growth_per_minute"] == 80.0
    assert "wait_for_delivery" in verdict.summary and "app/orders.py:42" in verdict.summary


def test_tasks_that_outlive_their_request_but_not_the_limit_are_not_a_leak() -> None:
    before = creator(created=40, alive=40, outlived=40, oldest_age_s=20.0)
    now = dataclasses.replace(before, oldest_age_s=29.9, growth_per_minute=120.0)
    assert task_leak.decide(now, before, leak_seconds=30.0) is None


def test_the_same_aged_tasks_are_reported_once() -> None:
    first = creator(created=5, alive=5, outlived=5, aged=5, oldest_age_s=31.0)
    later = dataclasses.replace(first, oldest_age_s=60.0)
    assert task_leak.decide(first, None, leak_seconds=30.0) is not None
    assert task_leak.decide(later, first, leak_seconds=30.0) is None


def test_a_pending_task_destroyed_by_the_collector_is_a_leak_at_once() -> None:
    before = creator(created=3, alive=3, outlived=3)
    now = dataclasses.replace(before, alive=0, destroyed_pending=3)
    verdict = task_leak.decide(now, before, leak_seconds=30.0)
    assert verdict is not None
    assert verdict.evidence["reason"] == "destroyed_pending"
    assert verdict.evidence["destroyed_pending"] == 3


def test_workers_started_outside_any_request_are_never_a_leak() -> None:
    # Alive for hours, but no request created them: outlived and aged stay 0.
    before = creator(coroutine="worker", created=3, alive=3, oldest_age_s=7200.0, method=None, route=None, routes=())
    now = dataclasses.replace(before, oldest_age_s=7201.0)
    assert task_leak.decide(now, before, leak_seconds=30.0) is None
    assert task_leak.decide(now, None, leak_seconds=30.0) is None


def test_exceptions_never_retrieved_alone_are_evidence_not_a_finding() -> None:
    before = creator(created=10)
    now = dataclasses.replace(before, never_retrieved=4)
    assert task_leak.decide(now, before, leak_seconds=30.0) is None
