"""Rules as functions of observations (no server, no clock but the one given): both sides of each
threshold, and what is never a finding."""

from __future__ import annotations

import dataclasses

from fastapi_doctor.diagnosis import (
    blocking_io,
    dependency_rebuild,
    large_payload,
    n_plus_one,
    pool_leak,
    slow_middleware,
    task_leak,
)
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


# -- n_plus_one ----------------------------------------------------------------------------------

def repeated(**changes: object) -> n_plus_one.RepeatedStatement:
    base = n_plus_one.RepeatedStatement(
        fingerprint="SELECT * FROM items WHERE order_id = ?", executions=10, location=WHERE,
        statements_in_request=12, distinct_statements=3, method="GET", route="/orders/{order_id}",
    )
    return dataclasses.replace(base, **changes)


def test_one_statement_run_threshold_times_in_a_request_is_n_plus_one() -> None:
    verdict = n_plus_one.decide(repeated(executions=10), threshold=10)
    assert verdict is not None
    assert (verdict.root_cause, verdict.method, verdict.route, verdict.location) == (
        "n_plus_one", "GET", "/orders/{order_id}", WHERE)
    assert verdict.evidence == {
        "fingerprint": "SELECT * FROM items WHERE order_id = ?", "executions": 10, "threshold": 10,
        "statements_in_request": 12, "distinct_statements": 3,
    }
    assert "10 times" in verdict.summary


def test_a_statement_run_fewer_times_than_the_threshold_is_not_n_plus_one() -> None:
    assert n_plus_one.decide(repeated(executions=9), threshold=10) is None


def test_a_long_statement_is_shortened_in_the_summary_not_in_the_evidence() -> None:
    long = "SELECT " + ", ".join(f"column_{i}" for i in range(60)) + " FROM items"
    verdict = n_plus_one.decide(repeated(fingerprint=long), threshold=10)
    assert verdict is not None
    assert long not in verdict.summary and long[:100] in verdict.summary
    assert verdict.evidence["fingerprint"] == long


# -- large_payload -------------------------------------------------------------------------------

def responses(**changes: object) -> large_payload.ResponseWindow:
    base = large_payload.ResponseWindow(
        method="GET", route="/items/", location=WHERE, responses=40, window=40, p50_bytes=600_000,
        p50_exposed_bytes=600_000, serialize_p50_s=0.002, serialize_share_p50=0.1,
        compression_middleware=False, content_encoding="identity",
    )
    return dataclasses.replace(base, **changes)


def test_large_responses_sent_uncompressed_to_gzip_clients_name_the_missing_middleware() -> None:
    verdict = large_payload.decide(responses(), large_bytes=262144)
    assert (verdict.root_cause, verdict.method, verdict.route) == ("large_payload", "GET", "/items/")
    assert "add GZipMiddleware" in verdict.summary and "586 KiB" in verdict.summary
    assert verdict.evidence["p50_uncompressed_bytes_to_gzip_clients"] == 600_000
    assert verdict.evidence["content_encoding"] == "identity"
    with_middleware = large_payload.decide(responses(compression_middleware=True), large_bytes=262144)
    assert "did not compress it" in with_middleware.summary


def test_costly_serialisation_of_compressed_responses_is_named_as_such() -> None:
    seen = responses(p50_exposed_bytes=0, serialize_p50_s=0.040, serialize_share_p50=0.8, content_encoding="gzip")
    verdict = large_payload.decide(seen, large_bytes=262144)
    assert "Serialising the response of GET /items/ takes 40.0 ms, 80% of the request" in verdict.summary
    assert verdict.evidence["content_encoding"] == "gzip"


# -- dependency_rebuild --------------------------------------------------------------------------

def built(**changes: object) -> dependency_rebuild.ObjectBuilt:
    base = dependency_rebuild.ObjectBuilt(
        label="httpx.AsyncClient", location=WHERE, dependency="get_client", count=3, method="GET",
        route="/quotes/{symbol}",
    )
    return dataclasses.replace(base, **changes)


def test_an_object_built_by_the_same_line_repeatedly_inside_requests_is_a_rebuild() -> None:
    assert dependency_rebuild.decide_built(built(count=2), repeats=3) is None
    verdict = dependency_rebuild.decide_built(built(count=3), repeats=3)
    assert verdict is not None
    assert (verdict.root_cause, verdict.route, verdict.location) == ("dependency_rebuild", "/quotes/{symbol}", WHERE)
    assert "in dependency get_client" in verdict.summary and "connection pool" in verdict.summary
    assert verdict.evidence == {"object": "httpx.AsyncClient", "created_in_requests": 3, "dependency": "get_client"}


def test_one_line_rebuilt_on_several_routes_names_them_all() -> None:
    routes = ("GET /quotes/{symbol}", "GET /quotes/", "POST /orders/")
    verdict = dependency_rebuild.decide_built(built(count=5, routes=routes), repeats=3)
    assert verdict is not None
    assert (verdict.route, verdict.location) == ("/quotes/{symbol}", WHERE)
    assert verdict.evidence["routes"] == list(routes) and "on 3 routes" in verdict.summary
    assert verdict.per_line  # one finding for the line, whichever route reports it next
    alone = dependency_rebuild.decide_built(built(routes=("GET /quotes/{symbol}",)), repeats=3)
    assert alone is not None and "routes" not in alone.evidence


def test_an_engine_rebuild_names_its_pool() -> None:
    verdict = dependency_rebuild.decide_built(
        built(label="sqlalchemy.engine.Engine", details={"pool": "sqlite:///app.db"}), repeats=3)
    assert verdict is not None
    assert "pool sqlite:///app.db" in verdict.summary
    assert verdict.evidence["pool"] == "sqlite:///app.db"


def test_the_same_computation_on_the_same_inputs_is_a_rebuild_after_the_repeats() -> None:
    computed = dependency_rebuild.SameComputation("load_rates", WHERE, 0.0123, 2, "GET", "/prices/")
    assert dependency_rebuild.decide_computed(computed, repeats=3) is None
    verdict = dependency_rebuild.decide_computed(dataclasses.replace(computed, count=3), repeats=3)
    assert verdict is not None
    assert verdict.evidence == {"computation": "load_rates", "cpu_ms": 12.3, "same_inputs": 3, "dependency": "load_rates"}


# -- slow_middleware -----------------------------------------------------------------------------

def layer(**changes: object) -> slow_middleware.LayerWindow:
    base = slow_middleware.LayerWindow(
        middleware="AuditMiddleware", location=WHERE, method=None, route=None, requests=40, window=40,
        flagged=30, self_time_p50_s=0.030, share_p50=0.6, other_routes_fast=False,
    )
    return dataclasses.replace(base, **changes)


def test_a_layer_slow_in_half_of_its_window_on_every_route_is_one_finding_without_a_route() -> None:
    verdict = slow_middleware.decide(layer(flagged=20), slow_s=0.010)
    assert verdict is not None
    assert (verdict.route, verdict.method) == (None, None)
    assert "Every route pays it" in verdict.summary and "FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS=10" in verdict.summary
    assert verdict.evidence == {"middleware": "AuditMiddleware", "self_time_p50_ms": 30.0, "share_of_request": 0.6,
                                "requests": 40, "threshold_ms": 10.0}


def test_a_layer_slow_in_less_than_half_of_its_window_or_too_few_requests_is_not_a_finding() -> None:
    assert slow_middleware.decide(layer(flagged=19), slow_s=0.010) is None
    assert slow_middleware.decide(layer(requests=19, window=19, flagged=19), slow_s=0.010) is None


def test_a_layer_slow_on_one_route_only_says_the_other_routes_do_not_pay_it() -> None:
    verdict = slow_middleware.decide(
        layer(method="POST", route="/orders/", other_routes_fast=True, self_time_p50_s=0.004), slow_s=0.010)
    assert verdict is not None
    assert (verdict.method, verdict.route) == ("POST", "/orders/")
    assert "other routes do not pay it" in verdict.summary and "60% of the request" in verdict.summary


# -- pool_leak -----------------------------------------------------------------------------------

HOLDER = pool_leak.Holder("/reports/", WHERE, 5, 12.5)


def test_a_connection_never_returned_is_a_leak_at_its_checkout_line_with_its_reason() -> None:
    held = pool_leak.CheckoutHeld("sqlite:///app.db", "garbage_collected", 1.5, WHERE, "GET", "/reports/")
    verdict = pool_leak.decide_held(held, leak_seconds=30.0)
    assert (verdict.root_cause, verdict.method, verdict.route, verdict.location) == (
        "pool_leak", "GET", "/reports/", WHERE)
    assert "garbage collector returned it after 1.50 s" in verdict.summary
    assert verdict.evidence == {"reason": "garbage_collected", "pool": "sqlite:///app.db", "age_s": 1.5,
                                "leak_seconds": 30.0}
    after = pool_leak.decide_held(dataclasses.replace(held, reason="request_finished"), leak_seconds=30.0)
    assert "after its request finished" in after.summary


def test_a_line_leaking_on_several_routes_is_one_finding_at_the_line_naming_them() -> None:
    # A connection dependency that never releases leaks on every route that uses it: one leak, one finding.
    routes = ("GET /api/user", "GET /api/articles", "GET /api/tags", "POST /api/users/login")
    held = pool_leak.CheckoutHeld("postgresql://db/app", "request_finished", 1.2, WHERE, "GET", "/api/user",
                                  routes=routes)
    verdict = pool_leak.decide_held(held, leak_seconds=30.0)
    assert verdict.per_line and (verdict.method, verdict.route, verdict.location) == ("GET", "/api/user", WHERE)
    assert verdict.evidence["routes"] == list(routes)
    assert "on 4 routes (GET /api/user, GET /api/articles, GET /api/tags, ...)" in verdict.summary
    # One route: named as before, no list.
    one = pool_leak.decide_held(dataclasses.replace(held, routes=routes[:1]), leak_seconds=30.0)
    assert one.per_line and "routes" not in one.evidence and " on /api/user " in one.summary
    # Without a line (no user frame found), leaks stay apart by route: nothing says they are one mistake.
    nowhere = pool_leak.decide_held(dataclasses.replace(held, location=None, routes=()), leak_seconds=30.0)
    assert not nowhere.per_line


def test_a_pool_stays_one_finding_when_its_busiest_holder_changes() -> None:
    other = pool_leak.Holder("/users/me", Location("app/deps.py", 40, "get_current_user"), 6, 3.0)
    first = pool_leak.PoolSaturated("postgresql://db/app", 2, 0, 2, 2, 18, 1.0, 0, (HOLDER, other))
    later = dataclasses.replace(first, holders=(other, HOLDER))
    names = pool_leak.FirstNamed()
    verdicts = [names.keep("postgresql://db/app", pool_leak.decide_saturated(s)) for s in (first, later)]
    assert [(v.method, v.route, v.location) for v in verdicts] == [(None, "/reports/", WHERE)] * 2
    # The evidence is the latest decision's: who holds the connections now.
    assert verdicts[1].evidence["holders"][0]["route"] == "/users/me"
    # Another pool is its own finding.
    assert names.keep("sqlite:///other.db", pool_leak.decide_saturated(later)).route == "/users/me"


def test_a_saturated_pool_is_sized_by_its_demand_and_names_its_holders() -> None:
    saturated = pool_leak.PoolSaturated("postgresql://db/app", 5, 2, 7, 7, 9, 3.2, 9, (HOLDER,))
    verdict = pool_leak.decide_saturated(saturated)
    assert (verdict.route, verdict.location) == ("/reports/", WHERE)
    assert "pool_size + max_overflow >= 16" in verdict.summary and "/reports/ x5" in verdict.summary
    assert verdict.evidence["reason"] == "pool_wait" and verdict.evidence["demand"] == 16
    assert verdict.evidence["holders"] == [
        {"route": "/reports/", "connections": 5, "oldest_age_s": 12.5, "location": str(WHERE)}]


def test_a_saturated_pool_is_a_finding_only_when_callers_wait_longer_than_they_hold_a_connection() -> None:
    # The default pool (5 + 10) under 33 clients on 2 cores: every connection in use, 2 callers waiting
    # on average, the process's CPU busy: the queue is at the CPU; a larger pool would not serve more.
    healthy = pool_leak.PoolSaturated("postgresql://db/app", 5, 10, 15, 15, 4, 2.1, 1, (HOLDER,),
                                      mean_waiting=2.0, cpu_busy=1.1)
    assert pool_leak.decide_saturated(healthy) is None
    # ... 14.9 waiting per 15 connections is still less than a wait per connection.
    assert pool_leak.decide_saturated(dataclasses.replace(healthy, mean_waiting=14.9)) is None
    # pool_size=2, max_overflow=0 under the same load: 18 callers wait for 2 connections.
    small = pool_leak.PoolSaturated("postgresql://db/app", 2, 0, 2, 2, 20, 2.1, 18, (HOLDER,),
                                    mean_waiting=18.0, cpu_busy=0.5)
    verdict = pool_leak.decide_saturated(small)
    assert verdict is not None and verdict.evidence["reason"] == "pool_wait"
    assert verdict.evidence["mean_waiting"] == 18.0 and verdict.evidence["process_cpu_busy"] == 0.5
    # Without the averages (not measured), saturation alone still decides.
    assert pool_leak.decide_saturated(dataclasses.replace(healthy, mean_waiting=None)) is not None


def test_a_saturated_pool_is_not_the_finding_when_the_cpu_is_the_queue() -> None:
    # 32 callers of an N+1 route on 2 cores: 16 waiting for 15 connections, and the app's threads on a
    # CPU or waiting for one for 5.9 cores' worth: more connections would queue at the CPU.
    starved_cpu = pool_leak.PoolSaturated("postgresql://db/app", 5, 10, 15, 15, 17, 2.1, 16, (HOLDER,),
                                          mean_waiting=15.6, cpu_busy=5.9, cpus=2)
    assert pool_leak.decide_saturated(starved_cpu) is None
    assert pool_leak.decide_saturated(dataclasses.replace(starved_cpu, cpu_busy=2.0)) is None
    # A pool of 2: the process busy (a cheap route takes the CPU the pool's callers leave), below its cores.
    small = dataclasses.replace(starved_cpu, pool_size=2, max_overflow=0, max_connections=2, mean_waiting=19.0,
                                cpu_busy=1.21)
    verdict = pool_leak.decide_saturated(small)
    assert verdict is not None and verdict.evidence["cpus"] == 2 and verdict.evidence["process_cpu_busy"] == 1.21


def test_asyncpg_acquires_waiting_in_less_than_half_of_the_window_are_not_exhaustion() -> None:
    waited = pool_leak.AcquiresWaited("postgresql://db/app", 10, 19, 40, 0.2, WHERE, "GET", "/reports/", (HOLDER,))
    assert pool_leak.decide_acquires(waited) is None
    verdict = pool_leak.decide_acquires(dataclasses.replace(waited, waits=20))
    assert verdict is not None and verdict.evidence["reason"] == "pool_exhausted"


def test_asyncpg_acquires_waiting_behind_a_busy_event_loop_are_not_exhaustion() -> None:
    # realworld_f100 healthy: 57 of 64 acquires waited on a pool of 10 while the one event loop was
    # busy (on a CPU or waiting for one) nearly all the time: the queue is at the loop.
    busy_loop = pool_leak.AcquiresWaited("postgresql://db/app", 10, 57, 64, 0.047, WHERE, "GET", "/api/user",
                                         (HOLDER,), loop_busy=0.97, loop_measured_s=0.9)
    assert pool_leak.decide_acquires(busy_loop) is None
    assert pool_leak.decide_acquires(dataclasses.replace(busy_loop, loop_busy=pool_leak.LOOP_BUSY)) is None
    # A pool too small beside an idle loop (holders awaiting slow work): the pool is the queue.
    idle_loop = dataclasses.replace(busy_loop, loop_busy=0.12)
    verdict = pool_leak.decide_acquires(idle_loop)
    assert verdict is not None and verdict.evidence["loop_busy"] == 0.12
    assert pool_leak.decide_acquires(dataclasses.replace(busy_loop, loop_busy=pool_leak.LOOP_BUSY - 0.01)) is not None
    # Unknown (no heartbeat on the pool's loop): the finding is not held back.
    unknown = pool_leak.decide_acquires(dataclasses.replace(busy_loop, loop_busy=None, loop_measured_s=0.0))
    assert unknown is not None and "loop_busy" not in unknown.evidence
    # Measured over less than two heartbeat ticks (the waits just began): not yet decided either way.
    just_began = dataclasses.replace(idle_loop, loop_measured_s=pool_leak.LOOP_MEASURED_S - 0.01)
    assert pool_leak.decide_acquires(just_began) is None
    assert pool_leak.decide_acquires(dataclasses.replace(just_began, loop_measured_s=pool_leak.LOOP_MEASURED_S))


def test_a_saturated_pool_of_one_event_loop_is_not_the_finding_when_the_loop_is_the_queue() -> None:
    # An asyncpg pool of 3 under 32 clients whose requests do their own work on the loop: 29 callers
    # waiting for 3 connections, one core's worth of CPU on 2 cores, and the loop busy all the time.
    busy_loop = pool_leak.PoolSaturated("postgresql://db/app", 3, 0, 3, 3, 29, 2.1, 0, (HOLDER,),
                                        mean_waiting=29.0, cpu_busy=1.01, cpus=2, loop_busy=0.99)
    assert pool_leak.decide_saturated(busy_loop) is None
    # The same pool whose holders await slow work: the loop mostly idle.
    verdict = pool_leak.decide_saturated(dataclasses.replace(busy_loop, cpu_busy=0.18, loop_busy=0.17))
    assert verdict is not None and verdict.evidence["loop_busy"] == 0.17
    # A pool not bound to one loop (SQLAlchemy's, used from threads): the loop does not enter.
    assert pool_leak.decide_saturated(dataclasses.replace(busy_loop, loop_busy=None)) is not None


def test_a_pool_exhausted_by_leaks_already_found_is_their_symptom_not_another_finding() -> None:
    # realworld connection_leak: the dependency leaked all 10 connections, 33 callers wait on an idle loop.
    leaked = pool_leak.PoolSaturated("postgresql://db/app", 10, 0, 10, 10, 33, 2.0, 0, (HOLDER,),
                                     mean_waiting=33.0, cpu_busy=0.02, cpus=2, loop_busy=0.01, leaked=10)
    assert pool_leak.decide_saturated(leaked) is None
    assert pool_leak.decide_saturated(dataclasses.replace(leaked, leaked=5)) is None  # half of them
    assert pool_leak.decide_saturated(dataclasses.replace(leaked, leaked=4)) is not None  # the pool too
    assert pool_leak.decide_saturated(dataclasses.replace(leaked, leaked=0)) is not None
    waited = pool_leak.AcquiresWaited("postgresql://db/app", 10, 64, 64, 0.2, WHERE, "GET", "/api/user", (HOLDER,),
                                      loop_busy=0.01, loop_measured_s=1.0, leaked=10)
    assert pool_leak.decide_acquires(waited) is None
    assert pool_leak.decide_acquires(dataclasses.replace(waited, leaked=0)) is not None


# -- blocking_io ---------------------------------------------------------------------------------

def block(**changes: object) -> blocking_io.LoopBlock:
    base = blocking_io.LoopBlock(
        root_cause="blocking_io", call="time.sleep", middleware=None, location=WHERE, method="GET",
        route="/quotes/{symbol}", in_request=True, blocked_s=0.2504, max_blocked_ms=250.4, episodes=2, samples=5,
        samples_total=6, threshold_s=0.1,
    )
    return dataclasses.replace(base, **changes)


def test_a_loop_block_names_the_call_the_endpoint_and_the_time() -> None:
    verdict = blocking_io.decide_loop_block(block())
    assert (verdict.root_cause, verdict.method, verdict.route, verdict.location) == (
        "blocking_io", "GET", "/quotes/{symbol}", WHERE)
    assert verdict.summary.startswith("time.sleep blocked the event loop for 250 ms in GET /quotes/{symbol};")
    assert verdict.evidence == {"blocked_ms": 250.4, "max_blocked_ms": 250.4, "threshold_ms": 100.0,
                                "call": "time.sleep", "samples": 5, "samples_total": 6, "episodes": 2}
    outside = blocking_io.decide_loop_block(block(in_request=False, method=None, route=None))
    assert "in a task outside any request" in outside.summary


def test_a_loop_block_in_a_middleware_or_a_serialiser_is_that_root_causes_verdict() -> None:
    middleware = blocking_io.decide_loop_block(block(root_cause="slow_middleware", middleware="AuditMiddleware"))
    assert middleware.root_cause == "slow_middleware" and "Middleware AuditMiddleware blocked" in middleware.summary
    assert middleware.evidence["middleware"] == "AuditMiddleware"
    payload = blocking_io.decide_loop_block(block(root_cause="large_payload", call=None))
    assert payload.root_cause == "large_payload" and payload.summary.startswith("Serialising the response of GET")


def test_a_loop_block_seen_once_is_held_unless_in_a_test_suite() -> None:
    assert not blocking_io.recurring(1, test_mode=False)
    assert blocking_io.recurring(2, test_mode=False)
    assert blocking_io.recurring(1, test_mode=True)


def test_a_threadpool_full_of_threads_waiting_for_connections_is_the_pools_finding() -> None:
    seen = blocking_io.ThreadpoolSaturated(
        limit=40, busy=40, waiting=12, saturated_s=2.5, holders=(("GET", "/reports/", 30), ("GET", "/items/", 10)),
        call="requests.get", location=WHERE, threads_in_call=30, threads_waiting_for_a_connection=20,
    )
    assert blocking_io.decide_threadpool(seen) is None
    verdict = blocking_io.decide_threadpool(dataclasses.replace(seen, threads_waiting_for_a_connection=19))
    assert verdict is not None
    assert (verdict.method, verdict.route) == ("GET", "/reports/")
    assert "GET /reports/ (30), GET /items/ (10)" in verdict.summary
    assert verdict.evidence["routes"] == {"/reports/": 30, "/items/": 10}


def test_connections_held_across_a_slow_call_blame_the_call_with_the_pool_as_symptom() -> None:
    saturated = pool_leak.PoolSaturated("postgresql://db/app", 5, 0, 5, 5, 8, 2.0, 8, (HOLDER,))
    verdict = blocking_io.decide_held_across_call(
        blocking_io.HeldAcrossCall(call="requests.get", location=WHERE, threads_in_call=5, saturated=saturated))
    assert (verdict.root_cause, verdict.route, verdict.location) == ("blocking_io", "/reports/", WHERE)
    assert verdict.summary.startswith("requests.get at app/orders.py:42 in notify holds a database connection")
    assert verdict.evidence["signal"] == "db_pool" and verdict.evidence["waiting"] == 8


# -- the registry --------------------------------------------------------------------------------

def test_every_root_cause_has_one_rule_a_title_and_a_packaged_runbook() -> None:
    from pathlib import Path

    from fastapi_doctor import config
    from fastapi_doctor.diagnosis import registry
    from fastapi_doctor.publish import runbooks

    assert config.ROOT_CAUSES == registry.ROOT_CAUSES
    docs = Path(__file__).resolve().parent.parent / "docs" / "runbooks"
    for cause in registry.REGISTRY:
        assert cause.rule.ROOT_CAUSE == cause.name and cause.title
        # The package ships the runbook written in docs/runbooks/ (its runbooks/ links there).
        assert runbooks.packaged(cause.name).read_text() == (docs / f"{cause.name}.md").read_text(), cause.name


# -- the routing: observations to the rules that declare their types -------------------------------

def diagnosis(**settings: object) -> tuple[object, object]:
    from fastapi_doctor.config import Settings
    from fastapi_doctor.diagnosis.registry import Diagnosis
    from fastapi_doctor.findings import FindingsRegistry

    findings = FindingsRegistry()
    return Diagnosis(Settings(**settings), findings), findings


def test_every_observation_handed_to_the_agent_is_decided_by_a_rule() -> None:
    import inspect

    from fastapi_doctor import observations

    made = {kind for kind in vars(observations).values()
            if inspect.isclass(kind) and dataclasses.is_dataclass(kind) and kind.__module__ == observations.__name__}
    routed, _ = diagnosis()
    # Holder and CreatorObservation are parts of other observations, never handed alone.
    assert set(routed.routes) == made - {observations.Holder, observations.CreatorObservation}


def test_an_observation_reaches_its_rule_with_the_threshold_of_the_settings() -> None:
    routed, findings = diagnosis(n_plus_one_threshold=12)
    assert routed.report(repeated(executions=11)) is False
    assert findings.all() == []
    assert routed.report(repeated(executions=12)) is True
    [finding] = findings.all()
    assert (finding.root_cause, finding.evidence["threshold"]) == ("n_plus_one", 12)


def test_a_loop_block_seen_once_is_published_when_its_function_blocks_again() -> None:
    routed, findings = diagnosis()
    first = block(episodes=1, blocked_s=0.3, max_blocked_ms=300.0)
    assert routed.report(first) is False
    assert findings.all() == []
    later = Location("app/orders.py", 44, "notify")  # the same function, caught on another line
    assert routed.report(block(episodes=2, location=later, first=first)) is True
    [finding] = findings.all()
    assert (finding.location, finding.count) == (later, 2)
    # In a test suite the first block is the finding at once, and is not counted again with the second.
    routed, findings = diagnosis(test_mode=True)
    assert routed.report(first) is True
    routed.report(block(episodes=2, first=first))
    assert [f.count for f in findings.all()] == [2]


def test_a_pools_finding_keeps_the_route_it_was_first_published_with() -> None:
    routed, findings = diagnosis()
    other = pool_leak.Holder("/users/me", Location("app/deps.py", 40, "get_current_user"), 6, 3.0)
    first = pool_leak.PoolSaturated("postgresql://db/app", 2, 0, 2, 2, 18, 1.0, 0, (HOLDER, other))
    routed.report(first)
    routed.report(dataclasses.replace(first, holders=(other, HOLDER)))
    [finding] = findings.all()
    assert (finding.route, finding.location, finding.count) == ("/reports/", WHERE, 2)


def test_a_rule_that_refines_another_takes_the_observation_from_it() -> None:
    import types

    from fastapi_doctor.config import Settings
    from fastapi_doctor.diagnosis import Verdict
    from fastapi_doctor.diagnosis.registry import REGISTRY, Diagnosis, RootCause
    from fastapi_doctor.findings import FindingsRegistry
    from fastapi_doctor.observations import CALL_INTERCEPTION, SYNC_STATEMENT_ON_LOOP, BlockingCall

    def sync_engine(seen: BlockingCall) -> Verdict | None:
        if seen.detected_by != SYNC_STATEMENT_ON_LOOP:
            return None
        return Verdict("sync_engine_example", seen.route, "A sync engine's statement on the loop", seen.location)

    # A rule of this test's own beside blocking_io (the registry's rules are found in diagnosis/).
    rule = types.SimpleNamespace(ROOT_CAUSE="sync_engine_example", TITLE="Sync engines in async routes",
                                 REFINES="blocking_io", decides=lambda settings: {BlockingCall: sync_engine})
    blocking_io_cause = next(cause for cause in REGISTRY if cause.name == "blocking_io")
    routed = Diagnosis(Settings(), FindingsRegistry(),
                       causes=(blocking_io_cause, RootCause("sync_engine_example", rule.TITLE, rule)))
    statement = BlockingCall("session.execute", "SQLiteDialect_pysqlite.do_execute", SYNC_STATEMENT_ON_LOOP, WHERE,
                             "GET", "/stock/{sku}")
    assert [v.root_cause for v in routed.decide(statement)] == ["sync_engine_example"]
    sleep = dataclasses.replace(statement, call="time.sleep", blocking_function="time.sleep",
                                detected_by=CALL_INTERCEPTION)
    assert [v.root_cause for v in routed.decide(sleep)] == ["blocking_io"]
