"""The Helm chart (helm/its-camera-ai), linted and rendered by Helm's own Go SDK (PyPI
``helm-python-sdk``: libhelm_c through ctypes, offline, no cluster), every manifest validated
against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict), and the properties
that matter asserted field by field for each value set in helm/its-camera-ai/ci/.

The app config each container would read is rebuilt from its mounts (ConfigMap, Secrets with
test values, emptyDirs) under a temporary root and loaded with ``load_settings`` and the
container's environment: what a pod would start with, short of the files' contents.

Size: the chart's whole contract in one module (value sets, render helpers, a network-policy
evaluator, a pod's file view): split, each part would render the chart again.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from its.analytics.v1 import analytics_service_pb2
from its.camera.v1 import camera_service_pb2
from its.inference.v1 import inference_service_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.common import Settings, load_settings
from its_camera_ai.shm.layout import PixelFormat, frame_bytes, total_size_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "its-camera-ai"
VALUE_SETS = ("dev", "production", "gpu-node")
RELEASE, NAMESPACE = "its-camera-ai", "its"
# The newest Kubernetes kubernetes-validate ships schemas for, at the time of writing.
KUBERNETES = "1.35"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}
READERS_PER_RING = 16  # the ring's default max_readers: one semaphore page each in /dev/shm
GRPC_SERVICE = {  # `serve <unit>` -> the grpc.health.v1 name its readiness asks about
    unit: module.DESCRIPTOR.services_by_name[name].full_name
    for unit, module, name in (
        ("decoder", camera_service_pb2, "CameraService"),
        ("inference", inference_service_pb2, "InferenceService"),
        ("analytics", analytics_service_pb2, "AnalyticsService"),
        ("query", query_service_pb2, "QueryService"),
    )
}
SECRET_DATA = {  # test values of the Secrets' keys (nothing secret: made up here)
    "database-dsn": "postgresql://its@postgres.its.svc:5432/its",
    "redis-url": "redis://redis.its.svc:6379/0",
    "metrics-token": "metrics-token-for-the-chart-test",
    "decoder-source-keys": "k1:" + base64.b64encode(bytes(32)).decode(),
    "tls.crt": "certificate",
    "tls.key": "key",
    "ca.crt": "ca",
}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values files layered as `helm -f a -f b` does (maps merge, anything else replaces)."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def values_of(value_set: str, **overrides: Any) -> dict[str, Any]:
    """A value set as given to Helm (its file, then `overrides`)."""
    text = (CHART / "ci" / f"{value_set}-values.yaml").read_text(encoding="utf-8")
    return merged(yaml.safe_load(text), overrides)


def effective(values: dict[str, Any]) -> dict[str, Any]:
    """What the templates see: the chart's defaults under `values`."""
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


def render(values: dict[str, Any], release: str = RELEASE) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=release, namespace=NAMESPACE)
    return [
        document
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        # libyaml's parser: the dashboards' JSON takes the pure-Python one most of a second.
        for document in yaml.load_all(text, Loader=yaml.CSafeLoader)
        if document
    ]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {value_set: render(values_of(value_set)) for value_set in VALUE_SETS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc["metadata"]["name"], doc["spec"]["template"]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for _, template in pods(docs):
        for container in template["spec"]["containers"]:
            yield template["spec"], container


def service_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
    """(pod spec, container) of every `its-camera-ai serve <unit>` container."""
    for spec, container in containers(docs):
        if container.get("args", [None])[0] == "serve":
            yield spec, container


def service_ports(docs: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """(name, port) of every rendered Service: what a peer target may name."""
    return {
        (d["metadata"]["name"], p["port"])
        for d in docs
        if d["kind"] == "Service"
        for p in d["spec"]["ports"]
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "the chart selects by labels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_passes_strictly(value_set: str) -> None:
    report = helm.lint(CHART, values_of(value_set), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_validates_against_kubernetes(value_set: str, rendered: Any) -> None:
    kinds = set()
    for doc in rendered[value_set]:
        kinds.add(doc["kind"])
        if doc["kind"] not in CRD_KINDS:  # checked structurally below
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "ServiceAccount"} <= kinds


def test_production_renders_every_kind_the_design_names(rendered: Any) -> None:
    kinds = {d["kind"] for d in rendered["production"]}
    assert kinds >= {"HorizontalPodAutoscaler", "PodDisruptionBudget", *CRD_KINDS}
    names = {d["metadata"]["name"] for d in rendered["production"] if d["kind"] == "Deployment"}
    assert names == {
        f"{RELEASE}-{c}" for c in ("camera-node", "analytics", "query", "envoy", "otel-collector")
    }


def test_service_monitor_scrapes_every_unit_with_the_metrics_token(rendered: Any) -> None:
    docs = rendered["production"]
    monitor = find(docs, "ServiceMonitor", RELEASE)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "metrics",
        "/metrics",
        "http",
    )
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "its-camera-ai-secrets", "key": "metrics-token"},
    }
    scraped = [
        d
        for d in docs
        if d["kind"] == "Service" and selects(monitor["spec"]["selector"], d["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["labels"]["its-camera-ai/unit"] for s in scraped) == sorted(
        GRPC_SERVICE
    )
    for service in scraped:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        target = find(docs, "Deployment", f"{RELEASE}-{component}")
        exposed = {
            p["containerPort"]
            for c in target["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert port["targetPort"] in exposed


def test_prometheus_rule_is_the_alerts_file(rendered: Any) -> None:
    rule = find(rendered["production"], "PrometheusRule", RELEASE)
    expected = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text(encoding="utf-8"))
    assert rule["spec"] == expected
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts, "no alert in files/alerts.yaml"
    assert all(r["expr"] and r["labels"]["severity"] for r in alerts)


def test_one_dashboard_config_map_per_json_file(rendered: Any) -> None:
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    maps = [
        d
        for d in rendered["production"]
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == len(files) >= 1
    shipped = {name: json.loads(text) for m in maps for name, text in m["data"].items()}
    assert shipped == {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}


@pytest.mark.parametrize(
    ("cameras", "width", "height", "pixel_format", "slots"),
    [(4, 1920, 1080, "rgb24", 8), (1, 641, 479, "gray8", 2), (7, 1002, 334, "nv12", 5)],
)
def test_shm_is_memory_sized_by_the_ring_layout(
    cameras: int, width: int, height: int, pixel_format: str, slots: int
) -> None:
    values = values_of(
        "production",
        cameraNode={"cameras": cameras, "maxFrame": {"width": width, "height": height}},
        config={"decoder": {"ring_slots": slots, "ring_pixel_format": pixel_format}},
    )
    docs, values = render(values), effective(values)
    ring = total_size_for(slots, frame_bytes(PixelFormat.from_name(pixel_format), width, height))
    size = (cameras + values["cameraNode"]["spareRings"]) * ring + cameras * READERS_PER_RING * 4096
    mib = -(-size // 2**20)
    template = find(docs, "Deployment", f"{RELEASE}-camera-node")["spec"]["template"]
    assert template["metadata"]["annotations"]["its-camera-ai/shm-bytes"] == str(size)
    pod = template["spec"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{mib}Mi"}
    by_name = {c["name"]: c for c in pod["containers"]}
    for name in ("decoder", "inference"):
        assert {"name": "shm", "mountPath": "/dev/shm"} in by_name[name]["volumeMounts"]
    memory = values["cameraNode"]["decoder"]["memoryMiB"]
    decoder = by_name["decoder"]["resources"]
    assert decoder["requests"]["memory"] == f"{memory['request'] + mib}Mi"
    assert decoder["limits"]["memory"] == f"{memory['limit'] + mib}Mi"
    config = yaml.safe_load(find(docs, "ConfigMap", f"{RELEASE}-config")["data"]["config.yaml"])
    assert config["decoder"]["max_cameras"] == cameras  # the decoder refuses what would not fit
    # The rings are mode 0600: both containers must run as one user, in one pid namespace.
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["shareProcessNamespace"] is True
    assert not any("runAsUser" in c["securityContext"] for c in pod["containers"])


def test_planar_frames_of_odd_size_are_refused() -> None:
    values = values_of(
        "production",
        cameraNode={"maxFrame": {"width": 1281, "height": 720}},
        config={"decoder": {"ring_pixel_format": "yuv420p"}},
    )
    with pytest.raises(helm.HelmError, match=r"cameraNode\.maxFrame: yuv420p .* even"):
        render(values)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gpu_is_requested_only_by_gpu_values(value_set: str, rendered: Any) -> None:
    gpu = value_set == "gpu-node"
    for name, template in pods(rendered[value_set]):
        spec = template["spec"]
        on_gpu = gpu and name == f"{RELEASE}-camera-node"
        for container in spec["containers"]:
            wants = {k: v.get("nvidia.com/gpu") for k, v in container["resources"].items()}
            if on_gpu and container["name"] == "inference":
                assert wants == {"requests": 1, "limits": 1}
            else:
                assert set(wants.values()) == {None}, container["name"]
        if on_gpu:
            assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
            toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            assert toleration in spec["tolerations"]
            assert spec["runtimeClassName"] == "nvidia"
        else:
            assert "nvidia" not in json.dumps(spec), name


def test_gpu_without_a_cuda_device_is_refused() -> None:
    values = values_of("gpu-node", config={"inference": {"device": "cpu", "precision": "fp32"}})
    with pytest.raises(helm.HelmError, match=r"config\.inference\.device"):
        render(values)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_has_probes_on_its_own_ports(value_set: str, rendered: Any) -> None:
    tls = value_set != "dev"
    for _, container in containers(rendered[value_set]):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{container['name']}: no {probe}"
    for _, container in service_containers(rendered[value_set]):
        unit = container["args"][1]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        grpc_port = int(env.get("ITS_GRPC__PORT", 50051))
        http_port = int(env.get("ITS_HTTP__PORT", 8000))
        exposed = {p["containerPort"] for p in container["ports"]}
        assert exposed == {grpc_port, http_port}
        ready = container["readinessProbe"]
        if tls:  # kubelet's gRPC probe cannot speak TLS: the side port's /health
            assert ready["httpGet"] == {"path": "/health", "port": http_port}
        else:
            assert ready["grpc"] == {"port": grpc_port, "service": GRPC_SERVICE[unit]}
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/live", "port": http_port}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_everything_runs_unprivileged_on_a_read_only_root(value_set: str, rendered: Any) -> None:
    for name, template in pods(rendered[value_set]):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["privileged"] is False
            assert context["runAsNonRoot"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
            assert container["resources"]["requests"]["cpu"]


def test_hpas_scale_on_cpu_and_a_pods_metric(rendered: Any) -> None:
    docs = rendered["production"]
    expected = {
        "analytics": "analytics_frames_per_second",
        "query": "grpc_server_handled_per_second",
    }
    for unit, metric in expected.items():
        hpa = find(docs, "HorizontalPodAutoscaler", f"{RELEASE}-{unit}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = find(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"]  # the HPA owns it
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        cpu, pods_metric = hpa["spec"]["metrics"]
        assert cpu["resource"]["name"] == "cpu"
        assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        assert pods_metric["type"] == "Pods"
        assert pods_metric["pods"]["metric"]["name"] == metric
        assert pods_metric["pods"]["target"]["type"] == "AverageValue"
        for container in target["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["requests"]["cpu"]  # utilisation is of the request


def test_pdbs_cover_the_replicated_pods_and_leave_room_to_drain(rendered: Any) -> None:
    docs = rendered["production"]
    values = effective(values_of("production"))
    for unit in ("analytics", "query", "envoy"):
        pdb = find(docs, "PodDisruptionBudget", f"{RELEASE}-{unit}")
        selected = [
            name
            for name, template in pods(docs)
            if selects(pdb["spec"]["selector"], template["metadata"]["labels"])
        ]
        assert selected == [f"{RELEASE}-{unit}"]
        settings = values[unit]
        fewest = settings["autoscaling"]["minReplicas"] if unit != "envoy" else settings["replicas"]
        assert 1 <= pdb["spec"]["minAvailable"] < fewest


def policy_allows(
    docs: list[dict[str, Any]], source: str, target: str, port: int
) -> tuple[bool, bool]:
    """Whether the release's NetworkPolicies let a `source` pod send to a `target` pod's
    port, and let the target take it (components of this release, matched by pod labels)."""
    labels = {name: template["metadata"]["labels"] for name, template in pods(docs)}
    src, dst = labels[f"{RELEASE}-{source}"], labels[f"{RELEASE}-{target}"]
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]

    def allowed(direction: str, own: dict[str, str], other: dict[str, str]) -> bool:
        rules = [
            rule
            for p in policies
            if selects(p["podSelector"], own)
            for rule in p.get(direction, [])
        ]
        peers_key = "to" if direction == "egress" else "from"
        return any(
            any(p["port"] == port for p in rule["ports"])
            and (
                peers_key not in rule
                or any(
                    "podSelector" in peer
                    and "namespaceSelector" not in peer
                    and selects(peer["podSelector"], other)
                    for peer in rule[peers_key]
                )
            )
            for rule in rules
        )

    return allowed("egress", src, dst), allowed("ingress", dst, src)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_network_policies_deny_by_default_and_allow_the_service_graph(
    value_set: str, rendered: Any
) -> None:
    docs = rendered[value_set]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = find(docs, "NetworkPolicy", f"{RELEASE}-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert set(deny) == {"podSelector", "policyTypes"}  # no rule: nothing allowed
    for name, template in pods(docs):
        assert selects(deny["podSelector"], template["metadata"]["labels"]), name
        own = [
            p for p in policies if selects(p["spec"]["podSelector"], template["metadata"]["labels"])
        ]
        assert len(own) == 2, f"{name}: the default deny and its own policy"
    edge = value_set != "dev"
    graph = [  # (source, target, port, allowed)
        ("analytics", "camera-node", 50051, True),  # scenes from the decoder
        ("query", "camera-node", 50051, True),
        ("camera-node", "analytics", 50051, True),  # inference's detection stream
        ("camera-node", "camera-node", 50051, True),  # inference to its decoder
        ("query", "analytics", 50051, False),
        ("analytics", "query", 50051, False),
        ("analytics", "camera-node", 50052, False),  # inference's Detect: the edge's only
        ("envoy", "query", 50051, edge) if edge else ("query", "query", 50051, False),
        ("envoy", "camera-node", 50052, edge) if edge else ("query", "camera-node", 8000, False),
    ]
    for source, target, port, allowed in graph:  # each side's own policy decides alike
        assert policy_allows(docs, source, target, port) == (allowed, allowed), (source, target)


def test_production_policies_name_the_stores_and_cameras(rendered: Any) -> None:
    docs = rendered["production"]
    egress = find(docs, "NetworkPolicy", f"{RELEASE}-camera-node")["spec"]["egress"]
    by_port = {p["port"]: rule.get("to") for rule in egress for p in rule["ports"]}
    assert by_port[5432] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    assert by_port[6379] == [{"ipBlock": {"cidr": "10.20.1.0/24"}}]
    assert by_port[554] == [{"ipBlock": {"cidr": "10.50.0.0/16"}}]
    assert 53 in by_port


def mounted_files(
    docs: list[dict[str, Any]], spec: dict[str, Any], container: dict[str, Any], root: Path
) -> None:
    """Lay out under `root` what the container sees at its mount points (test secrets)."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume, target = volumes[mount["name"]], root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        if "configMap" in volume:
            files = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
        sources = volume.get("projected", {}).get("sources", [])
        if "secret" in volume:
            sources = [{"secret": {"items": volume["secret"]["items"]}}]
        for source in sources:
            assert set(source) == {"secret"}, "secrets are the only projected files"
            files |= {item["path"]: SECRET_DATA[item["key"]] for item in source["secret"]["items"]}
        for name, text in files.items():
            (target / name).write_text(text, encoding="utf-8")


def rerooted(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: rerooted(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [rerooted(v, root) for v in value]
    if isinstance(value, str) and value.startswith(("/etc/its/", "/var/lib/its/")):
        return f"{root}{value}"
    return value


def container_settings(
    docs: list[dict[str, Any]], spec: Any, container: Any, root: Path, monkeypatch: Any
) -> Settings:
    mounted_files(docs, spec, container, root)
    args = container["args"]
    config_file = root / args[args.index("--config") + 1].lstrip("/")
    document = rerooted(yaml.safe_load(config_file.read_text(encoding="utf-8")), root)
    config_file.write_text(yaml.safe_dump(document), encoding="utf-8")
    for name in [n for n in os.environ if n.startswith("ITS_")]:
        monkeypatch.delenv(name)
    for variable in container.get("env", []):
        assert "valueFrom" not in variable, "secrets are files, never variables"
        monkeypatch.setenv(variable["name"], variable["value"])
    return load_settings(config_file)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_each_service_loads_its_config_from_its_mounts(
    value_set: str, rendered: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[value_set]
    services = service_ports(docs)
    for spec, container in service_containers(docs):
        assert "envFrom" not in container
        root = tmp_path / container["name"]
        settings = container_settings(docs, spec, container, root, monkeypatch)
        assert settings.environment == effective(values_of(value_set))["environment"]
        assert {settings.grpc.port, settings.http.port} == {
            p["containerPort"] for p in container["ports"]
        }
        assert settings.database.dsn is not None
        assert settings.database.dsn.get_secret_value() == SECRET_DATA["database-dsn"]
        assert settings.redis.url is not None
        for path in (settings.decoder.source_keys_file, settings.security.metrics_token_file):
            assert path
            assert path.is_file()
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        if container["name"] == "analytics":
            assert str(settings.analytics.spool_dir).removeprefix(str(root)) in mounts
        if container["name"] == "inference":
            assert str(settings.inference.engine_cache_dir).removeprefix(str(root)) in mounts
        for target in (settings.inference.decoder_target, settings.inference.analytics_target):
            host, _, port = (target or "").rpartition(":")
            assert (host, int(port)) in services
        if settings.security.tls.enabled:
            for path in (settings.security.tls.cert_file, settings.security.peer_tls.key_file):
                assert path
                assert path.is_file()


def test_production_security_is_config_production_yaml(
    rendered: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["production"]
    spec, container = next(service_containers(docs))
    settings = container_settings(docs, spec, container, tmp_path, monkeypatch)
    chart = json.loads(
        json.dumps(settings.security.model_dump(mode="json")).replace(str(tmp_path), "")
    )
    monkeypatch.setenv("ITS_DATABASE__DSN", SECRET_DATA["database-dsn"])
    reference = load_settings(REPO / "config" / "production.yaml").security
    expected = reference.model_dump(mode="json")
    identity = effective(values_of("production"))["envoy"]["identity"]
    assert chart["tls"].pop("edge_proxies") == [identity]
    expected["tls"].pop("edge_proxies", None)
    assert chart == expected


def test_envoy_runs_the_repository_config_against_the_chart_services(rendered: Any) -> None:
    docs = rendered["production"]
    source = (REPO / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    config_map = find(docs, "ConfigMap", f"{RELEASE}-envoy")
    assert config_map["data"]["envoy.yaml"] == source
    other = render(values_of("production"), release="edge-test")
    config = yaml.safe_load(
        find(other, "ConfigMap", "edge-test-its-camera-ai-envoy")["data"]["envoy.yaml"]
    )
    services = service_ports(other)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"].startswith("jwks_"):
            continue
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) in services
    heap = config["overload_manager"]["resource_monitors"][1]["typed_config"]
    limit = find(docs, "Deployment", f"{RELEASE}-envoy")["spec"]["template"]["spec"]["containers"][
        0
    ]["resources"]["limits"]["memory"]
    assert heap["max_heap_size_bytes"] < int(limit.removesuffix("Mi")) * 2**20


@pytest.mark.parametrize("value_set", ["dev", "production"])
def test_services_export_traces_to_the_collector(value_set: str, rendered: Any) -> None:
    docs = rendered[value_set]
    collector = find(docs, "Service", f"{RELEASE}-otel-collector")
    assert {"name": "otlp-grpc", "port": 4317, "targetPort": 4317, "protocol": "TCP"} in collector[
        "spec"
    ]["ports"]
    for _, container in service_containers(docs):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["ITS_TRACING__OTLP_ENDPOINT"] == f"http://{RELEASE}-otel-collector:4317"
    plain = render(values_of("production", tracing={"collector": {"enabled": False}}))
    assert not [d for d in plain if "otel-collector" in d["metadata"]["name"]]
    for _, container in service_containers(plain):
        assert "ITS_TRACING__OTLP_ENDPOINT" not in {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"cameraNode": {"camras": 3}}, "camras"),
        ({"analytics": {"autoscaling": {"minReplica": 1}}}, "minReplica"),
        ({"config": {"decoderr": {}}}, "decoderr"),
        ({"tls": {"clientSecrets": {"inferense": "x"}}}, "inferense"),
    ],
)
def test_a_misspelled_value_fails_naming_it(overrides: dict[str, Any], named: str) -> None:
    values = values_of("production", **overrides)
    with pytest.raises(helm.HelmValuesError, match=f"additional properties '{named}'"):
        render(values)
    report = helm.lint(CHART, values, strict=True)
    assert any(named in error for error in report["errors"])
