"""collector-config/: the agent and gateway OpenTelemetry Collector configurations.

No collector binary can be installed here, so each file is checked the way the collector would
reject it at start-up: every pipeline names only components defined in the file, every component
type exists in otelcol-contrib (collector-config/components.yaml, with the version it comes from),
and the ports agree with the agent's defaults and with the Helm chart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector-config"
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


COMPONENTS = load("components.yaml")


def component_type(component_id: str) -> str:
    """``otlp/gateway`` -> ``otlp`` (the type; what follows the slash is the instance name)."""
    return component_id.split("/", 1)[0]


def port(endpoint: str) -> int:
    m = re.search(r":(\d+)$", endpoint)
    assert m, f"no port in {endpoint!r}"
    return int(m.group(1))


@pytest.mark.parametrize("name", ["agent.yaml", "gateway.yaml"])
def test_pipelines_use_only_defined_components_of_otelcol_contrib(name: str) -> None:
    config = load(name)
    service = config["service"]
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    assert service["pipelines"], f"{name}: no pipelines"
    for pipeline_id, pipeline in service["pipelines"].items():
        assert component_type(pipeline_id) in ("traces", "metrics", "logs"), pipeline_id
        assert pipeline.get("receivers") and pipeline.get("exporters"), f"{name}: {pipeline_id} needs receivers and exporters"
        for kind in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(kind, []):
                assert component_id in (config.get(kind) or {}), f"{name}: {pipeline_id} uses undefined {kind[:-1]} {component_id}"
                used[kind].add(component_id)
        processors = pipeline.get("processors", [])
        # memory_limiter first, batch last: the collector's documented order.
        assert processors and processors[0] == "memory_limiter", f"{name}: {pipeline_id} must start with memory_limiter"
        assert processors[-1] == "batch", f"{name}: {pipeline_id} must end with batch"
    for extension in service.get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"{name}: undefined extension {extension}"
        used["extensions"].add(extension)
    for kind in KINDS:
        defined = set(config.get(kind) or {})
        assert defined == used[kind], f"{name}: {kind} defined but not used: {defined - used[kind]}"
        for component_id in defined:
            assert component_type(component_id) in (COMPONENTS.get(kind) or {}), (
                f"{name}: {kind[:-1]} type {component_type(component_id)!r} is not in otelcol-contrib "
                f"{COMPONENTS['version']} (collector-config/components.yaml)"
            )


def test_component_list_names_its_version_and_modules() -> None:
    assert COMPONENTS["distribution"] == "otelcol-contrib"
    assert re.fullmatch(r"\d+\.\d+\.\d+", COMPONENTS["version"])
    assert COMPONENTS["image"].endswith(":" + COMPONENTS["version"])
    for kind in KINDS:
        for component, module in (COMPONENTS.get(kind) or {}).items():
            assert module.startswith(("go.opentelemetry.io/collector/", "github.com/open-telemetry/opentelemetry-collector-contrib/")), module
            # A component's Go module is named after its type (tail_sampling -> tailsamplingprocessor).
            assert module.rsplit("/", 1)[1].startswith(component.replace("_", "")), (component, module)


def test_agent_receives_otlp_on_the_agents_default_port_and_forwards_to_the_gateway() -> None:
    from fastapi_doctor import config as agent_config

    agent, gateway = load("agent.yaml"), load("gateway.yaml")
    for config in (agent, gateway):
        protocols = config["receivers"]["otlp"]["protocols"]
        assert port(protocols["grpc"]["endpoint"]) == 4317
        assert port(protocols["http"]["endpoint"]) == 4318
    # The agent speaks OTLP/gRPC; the standard port the SDK's gRPC exporter and the agent's setting name.
    assert "localhost:4317" in agent_config.SETTINGS_BY_FIELD["otlp_endpoint"].allowed
    assert _grpc_default_port() == 4317
    assert agent["exporters"]["otlp/gateway"]["endpoint"] == "${env:GATEWAY_ENDPOINT}"
    for signal in ("traces", "metrics", "logs"):
        assert agent["service"]["pipelines"][signal]["exporters"] == ["otlp/gateway"]
        assert signal in gateway["service"]["pipelines"], f"the gateway drops the agent's {signal}"
    processors = agent["service"]["pipelines"]["traces"]["processors"]
    assert "k8sattributes" in processors and "resourcedetection" in processors
    # The agent's resource carries the pod's uid (set by the chart), which k8sattributes matches first.
    association = agent["processors"]["k8sattributes"]["pod_association"][0]["sources"][0]
    assert association == {"from": "resource_attribute", "name": "k8s.pod.uid"}


def _grpc_default_port() -> int:
    import inspect

    from opentelemetry.exporter.otlp.proto.grpc import exporter as grpc_exporter

    m = re.search(r'"http://localhost:(\d+)"', inspect.getsource(grpc_exporter))
    return int(m.group(1)) if m else -1


def test_gateway_tail_sampling_keeps_errors_slow_traces_and_a_ratio() -> None:
    from fastapi_doctor import config as agent_config

    gateway = load("gateway.yaml")
    policies = {p["type"]: p for p in gateway["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    # "Slow" means what it means to the agent: FASTAPI_DOCTOR_SLOW_REQUEST_MS.
    assert policies["latency"]["latency"]["threshold_ms"] == agent_config.SETTINGS_BY_FIELD["slow_request_ms"].default
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert gateway["service"]["pipelines"]["traces"]["processors"] == ["memory_limiter", "tail_sampling", "batch"]
    assert gateway["service"]["pipelines"]["metrics"]["exporters"] == ["prometheusremotewrite"]
    assert gateway["service"]["pipelines"]["traces"]["exporters"] == ["otlp/traces"]


def test_ports_and_versions_agree_with_the_chart() -> None:
    from test_helm import container, helm_template, one

    agent = load("agent.yaml")
    docs = helm_template()
    sidecar = container(docs, "Deployment", "otel-collector")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports["otlp-grpc"] == port(agent["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    assert ports["otlp-http"] == port(agent["receivers"]["otlp"]["protocols"]["http"]["endpoint"])
    assert ports["otel-health"] == port(agent["extensions"]["health_check"]["endpoint"])
    app_env = {e["name"]: e.get("value") for e in container(docs, "Deployment", "app")["env"]}
    assert port(app_env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ports["otlp-grpc"]
    assert app_env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert {e["name"] for e in sidecar["env"]} >= {"GATEWAY_ENDPOINT", "K8S_NODE_NAME"}  # the variables agent.yaml reads
    assert sidecar["image"] == COMPONENTS["image"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-collector"))
    assert yaml.safe_load(cm["data"]["agent.yaml"]) == agent
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
