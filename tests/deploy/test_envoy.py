"""The edge proxy's config (envoy/envoy.yaml), parsed into Envoy's own protos.

No Envoy binary runs here: scripts/envoy_check.py, in its own environment beside
xds-protos (.venv-xds), parses the config as Envoy would (unknown fields, enums, type URLs,
the protos' validation rules, cluster references) and prints it as JSON. These tests assert
the edge's security and routing properties on that parsed form, field by field, and that
the checker refuses broken copies naming the fault.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "envoy" / "envoy.yaml"
CHECKER = REPO / "scripts" / "envoy_check.py"
XDS_PYTHON = REPO / ".venv-xds" / "bin" / "python"
TYPE = "type.googleapis.com/envoy.extensions."
SECRETS_DIR = "/etc/envoy/tls/"
PAYLOAD_HEADER = "x-jwt-payload"
# Service unit (Envoy cluster) -> the gRPC packages it serves (docs/architecture.md).
UNITS = {
    "decoder": ("its.camera.v1",),
    "analytics": ("its.analytics.v1",),
    "inference": ("its.inference.v1",),
    "query": ("its.query.v1", "its.admin.v1"),
}
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)

Json = dict[str, Any]


def _run_checker(config: Path) -> subprocess.CompletedProcess[str]:
    if not XDS_PYTHON.exists():
        reason = (
            f"{XDS_PYTHON.relative_to(REPO)} is missing: python3 -m venv .venv-xds && "
            ".venv-xds/bin/pip install xds-protos pyyaml"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return subprocess.run(
        [str(XDS_PYTHON), str(CHECKER), str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def bootstrap() -> Json:
    result = _run_checker(CONFIG)
    assert result.returncode == 0, result.stderr
    parsed: Json = json.loads(result.stdout)
    return parsed


def _grpc_methods() -> Iterator[tuple[str, str, bool]]:
    """(package, path, streaming) of every RPC in protos/its/*/v1/*_service.proto."""
    for proto in sorted((REPO / "protos" / "its").glob("*/v1/*_service.proto")):
        area = proto.parent.parent.name
        module = importlib.import_module(f"its.{area}.v1.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                streaming = method.client_streaming or method.server_streaming
                yield f"its.{area}.v1", f"/{service.full_name}/{method.name}", streaming


def _typed(node: Json, message: str) -> Json:
    assert node["@type"] == TYPE + message
    return node


def _hcm(bootstrap: Json) -> Json:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    return _typed(
        network_filter["typed_config"],
        "filters.network.http_connection_manager.v3.HttpConnectionManager",
    )


def _http_filter(bootstrap: Json, name: str) -> Json:
    (found,) = [f for f in _hcm(bootstrap)["http_filters"] if f["name"] == name]
    config: Json = found["typed_config"]
    return config


def _routes(bootstrap: Json) -> list[Json]:
    (virtual_host,) = _hcm(bootstrap)["route_config"]["virtual_hosts"]
    routes: list[Json] = virtual_host["routes"]
    return routes


def _first_match(entries: list[Json], path: str) -> Json | None:
    """Envoy's rule for routes and jwt_authn rules alike: the first match wins."""
    for entry in entries:
        match = entry["match"]
        assert set(match) <= {"path", "prefix", "grpc"}, f"unexpected matcher {match}"
        if match.get("path") == path or path.startswith(match.get("prefix", "\0")):
            return entry
    return None


def _clusters(bootstrap: Json) -> dict[str, Json]:
    return {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}


def _strings(node: object, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def test_the_listener_takes_tls_1_3_with_a_client_certificate_only(bootstrap: Json) -> None:
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8443}
    (chain,) = listener["filter_chains"]
    tls = _typed(
        chain["transport_socket"]["typed_config"],
        "transport_sockets.tls.v3.DownstreamTlsContext",
    )
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["tls_params"] == {
        "tls_minimum_protocol_version": "TLSv1_3",
        "tls_maximum_protocol_version": "TLSv1_3",
    }
    assert common["alpn_protocols"] == ["h2"]
    validation = common["validation_context"]
    assert validation["trusted_ca"]["filename"].startswith(SECRETS_DIR)
    sans = validation["match_typed_subject_alt_names"]
    assert sans, "client certificates must be matched by SAN"
    assert all(san["san_type"] == "URI" for san in sans)
    assert all(san["matcher"]["prefix"] == "spiffe://its-camera-ai/" for san in sans)
    (certificate,) = common["tls_certificates"]
    assert certificate["certificate_chain"]["filename"].startswith(SECRETS_DIR)
    assert certificate["private_key"]["filename"].startswith(SECRETS_DIR)


def test_no_secret_is_inline(bootstrap: Json) -> None:
    inline = [path for path, _ in _strings(bootstrap) if "inline" in path.rsplit(".", 1)[-1]]
    assert not inline, f"inline data sources: {inline}"


def test_the_admin_interface_listens_on_loopback_only(bootstrap: Json) -> None:
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_connection_manager_speaks_grpc_and_tags_every_request(bootstrap: Json) -> None:
    hcm = _hcm(bootstrap)
    assert hcm["codec_type"] == "HTTP2"
    assert hcm["use_remote_address"] is True
    assert hcm.get("xff_num_trusted_hops", 0) == 0
    assert hcm.get("generate_request_id", True) is True
    assert hcm.get("preserve_external_request_id", False) is False
    assert hcm["always_set_request_id_in_response"] is True
    assert hcm.get("forward_client_cert_details", "SANITIZE") == "SANITIZE"
    # Prefix rules (JWT, routes) see normalised paths only.
    assert hcm["normalize_path"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    monitors = [m["name"] for m in bootstrap["overload_manager"]["resource_monitors"]]
    assert "envoy.resource_monitors.global_downstream_max_connections" in monitors


def test_the_access_log_is_json_on_stdout_with_each_call_s_details(bootstrap: Json) -> None:
    (access_log,) = _hcm(bootstrap)["access_log"]
    config = _typed(access_log["typed_config"], "access_loggers.stream.v3.StdoutAccessLog")
    logged = set(config["log_format"]["json_format"].values())
    for operator in (
        "%REQ(X-REQUEST-ID)%",
        "%REQ(:METHOD)%",
        "%REQ(:PATH)%",
        "%GRPC_STATUS%",
        "%DURATION%",
        "%UPSTREAM_HOST%",
        "%DOWNSTREAM_PEER_URI_SAN%",
    ):
        assert operator in logged


def test_filters_strip_count_limit_and_verify_before_routing(bootstrap: Json) -> None:
    names = [f["name"] for f in _hcm(bootstrap)["http_filters"]]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]
    grpc_stats = _http_filter(bootstrap, "envoy.filters.http.grpc_stats")
    _typed(grpc_stats, "filters.http.grpc_stats.v3.FilterConfig")
    assert grpc_stats["stats_for_all_methods"] is True
    limit = _typed(
        _http_filter(bootstrap, "envoy.filters.http.local_ratelimit"),
        "filters.http.local_ratelimit.v3.LocalRateLimit",
    )
    bucket = limit["token_bucket"]
    assert bucket["max_tokens"] > 0
    assert bucket["tokens_per_fill"] > 0
    assert bucket["fill_interval"]
    assert limit["status"]["code"] == "TooManyRequests"
    assert limit["rate_limited_as_resource_exhausted"] is True
    for switch in ("filter_enabled", "filter_enforced"):
        assert limit[switch]["default_value"]["numerator"] == 100
        assert limit[switch]["default_value"].get("denominator", "HUNDRED") == "HUNDRED"


def test_a_client_cannot_bring_its_own_verified_claims(bootstrap: Json) -> None:
    hcm = _hcm(bootstrap)
    names = [f["name"] for f in hcm["http_filters"]]
    mutation = _typed(
        _http_filter(bootstrap, "envoy.filters.http.header_mutation"),
        "filters.http.header_mutation.v3.HeaderMutation",
    )
    assert {"remove": PAYLOAD_HEADER} in mutation["mutations"]["request_mutations"]
    # Removed before jwt_authn sets it from a verified token...
    assert names.index("envoy.filters.http.header_mutation") < names.index(
        "envoy.filters.http.jwt_authn"
    )
    jwt = _http_filter(bootstrap, "envoy.filters.http.jwt_authn")
    assert {p["forward_payload_header"] for p in jwt["providers"].values()} == {PAYLOAD_HEADER}
    # ...and named nowhere else: nothing later removes the verified header (route
    # request_headers_to_remove runs in the router, after jwt_authn) or adds one.
    named = [path for path, value in _strings(hcm) if value.lower() == PAYLOAD_HEADER]
    header_filter = names.index("envoy.filters.http.header_mutation")
    jwt_filter = names.index("envoy.filters.http.jwt_authn")
    expected = [
        f".http_filters[{header_filter}].typed_config.mutations.request_mutations[0].remove"
    ]
    expected += [
        f".http_filters[{jwt_filter}].typed_config.providers.{name}.forward_payload_header"
        for name in jwt["providers"]
    ]
    assert sorted(named) == sorted(expected), f"{PAYLOAD_HEADER} named at {named}"


def test_each_issuer_has_its_own_key_set_fetched_over_tls(bootstrap: Json) -> None:
    jwt = _typed(
        _http_filter(bootstrap, "envoy.filters.http.jwt_authn"),
        "filters.http.jwt_authn.v3.JwtAuthentication",
    )
    providers = jwt["providers"]
    assert len(providers) >= 2
    clusters = _clusters(bootstrap)
    key_set_clusters = set()
    for name, provider in providers.items():
        assert provider["issuer"].startswith("https://"), name
        assert provider["audiences"], name
        assert not provider.get("forward", False), f"{name} forwards the raw token"
        jwks = provider["remote_jwks"]
        assert jwks["cache_duration"], name
        assert jwks["http_uri"]["uri"].startswith("https://"), name
        cluster = clusters[jwks["http_uri"]["cluster"]]
        tls = _typed(
            cluster["transport_socket"]["typed_config"],
            "transport_sockets.tls.v3.UpstreamTlsContext",
        )
        assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        key_set_clusters.add(cluster["name"])
    assert len(key_set_clusters) == len(providers)


def test_every_call_but_health_needs_a_token(bootstrap: Json) -> None:
    jwt = _http_filter(bootstrap, "envoy.filters.http.jwt_authn")
    rules, providers = jwt["rules"], set(jwt["providers"])

    def required(path: str) -> Json | None:
        rule = _first_match(rules, path)
        assert rule is not None, f"no JWT rule for {path}"
        requires: Json | None = rule.get("requires")
        return requires

    assert required(HEALTH_CHECK) is None
    assert required(HEALTH_WATCH) is None
    for path in REFLECTION:
        requires = required(path)
        assert requires is not None, f"{path} is open"
        assert requires.get("provider_name") in providers
    for _, path, _ in _grpc_methods():
        requires = required(path)
        assert requires is not None, f"{path} is open"
        requirements = requires["requires_any"]["requirements"]
        assert {r["provider_name"] for r in requirements} == providers, path
    # The last rule catches everything, a path no route knows included.
    assert rules[-1]["match"] == {"prefix": "/"}
    catch_all = rules[-1]["requires"]["requires_any"]["requirements"]
    assert {r["provider_name"] for r in catch_all} == providers


def test_every_rpc_routes_to_its_unit_with_timeouts_and_retries_for_its_kind(
    bootstrap: Json,
) -> None:
    routes = _routes(bootstrap)
    cluster_of = {package: unit for unit, packages in UNITS.items() for package in packages}
    calls = [(cluster_of[package], path, streaming) for package, path, streaming in _grpc_methods()]
    assert {unit for unit, _, _ in calls} == set(UNITS)
    calls += [("query", HEALTH_CHECK, False), ("query", HEALTH_WATCH, True)]
    calls += [("query", path, True) for path in REFLECTION]
    for unit, path, streaming in calls:
        route = _first_match(routes, path)
        assert route is not None, f"no route for {path}"
        action = route["route"]
        assert route["match"]["grpc"] == {}, path
        assert action["cluster"] == unit, path
        if streaming:
            assert action["timeout"] == "0s", f"{path}: a route timeout cuts the stream"
            assert action["idle_timeout"] not in ("", "0s"), path
            assert "retry_policy" not in action, f"{path}: a stream is never retried"
        else:
            assert action["timeout"] not in ("", "0s"), path
            retry = action["retry_policy"]
            assert retry["retry_on"] == "unavailable", path
            assert retry["num_retries"] >= 1, path
            assert retry["per_try_timeout"], path
            assert retry["retry_back_off"]["base_interval"], path
    # Nothing a stream's route would inherit.
    (virtual_host,) = _hcm(bootstrap)["route_config"]["virtual_hosts"]
    assert "retry_policy" not in virtual_host
    assert "request_headers_to_remove" not in virtual_host


def test_every_service_cluster_is_mtls_http2_health_checked_and_guarded(bootstrap: Json) -> None:
    clusters = _clusters(bootstrap)
    services: dict[str, set[str]] = {}
    for package, path, _ in _grpc_methods():
        services.setdefault(package, set()).add(path.split("/")[1])
    identities = set()
    for unit, packages in UNITS.items():
        cluster, host = clusters[unit], f"its-camera-ai-{unit}"
        assert cluster["type"] == "STRICT_DNS", unit
        (locality,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = locality["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address == {"address": host, "port_value": 50051}, unit
        options = cluster["typed_extension_protocol_options"]
        protocol = _typed(
            options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
            "upstreams.http.v3.HttpProtocolOptions",
        )
        assert "http2_protocol_options" in protocol["explicit_http_config"], unit
        tls = _typed(
            cluster["transport_socket"]["typed_config"],
            "transport_sockets.tls.v3.UpstreamTlsContext",
        )
        assert tls["sni"] == host, unit
        common = tls["common_tls_context"]
        assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3", unit
        (certificate,) = common["tls_certificates"]
        assert certificate["certificate_chain"]["filename"].startswith(SECRETS_DIR), unit
        identities.add(certificate["certificate_chain"]["filename"])
        validation = common["validation_context"]
        assert validation["trusted_ca"]["filename"].startswith(SECRETS_DIR), unit
        expected_san = {"san_type": "DNS", "matcher": {"exact": host}}
        assert validation["match_typed_subject_alt_names"] == [expected_san], unit
        (health_check,) = cluster["health_checks"]
        served = set().union(*(services[package] for package in packages))
        assert health_check["grpc_health_check"]["service_name"] in served, unit
        outliers = cluster["outlier_detection"]
        assert outliers["consecutive_5xx"] > 0, unit
        assert outliers["consecutive_gateway_failure"] > 0, unit
        assert outliers["base_ejection_time"], unit
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        for limit in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            assert thresholds[limit] > 0, f"{unit}.{limit}"
    # One client identity towards every service: Envoy's own.
    assert len(identities) == 1


BROKEN_COPIES = [
    pytest.param(
        "stat_prefix: edge\n",
        "stat_prefx: edge\n",
        ['no field named "stat_prefx"', "HttpConnectionManager"],
        id="misspelled-field",
    ),
    pytest.param(
        "tls_minimum_protocol_version: TLSv1_3",
        "tls_minimum_protocol_version: TLSv1_9",
        ["Invalid enum value TLSv1_9", "tls_minimum_protocol_version"],
        id="wrong-enum",
    ),
    pytest.param(
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.filters.http.routr.v3.Router",
        ["unknown type URL", "envoy.extensions.filters.http.routr.v3.Router", "http_filters[4]"],
        id="wrong-type-url",
    ),
    pytest.param(
        "port_value: 8443",
        "port_value: 70000",
        ["listeners[0].address.socket_address.port_value must be <= 65535"],
        id="port-out-of-range",
    ),
    pytest.param(
        "cluster: inference\n",
        "cluster: inferense\n",
        ["cluster 'inferense' is not defined", "routes["],
        id="undefined-cluster",
    ),
]


@pytest.mark.parametrize(("original", "broken", "expected"), BROKEN_COPIES)
def test_the_checker_refuses_a_broken_copy_naming_the_fault(
    tmp_path: Path, original: str, broken: str, expected: list[str]
) -> None:
    text = CONFIG.read_text()
    assert original in text
    copy = tmp_path / "envoy.yaml"
    copy.write_text(text.replace(original, broken, 1))
    result = _run_checker(copy)
    assert result.returncode == 1
    assert result.stdout == ""
    for fragment in expected:
        assert fragment in result.stderr


def test_the_checker_refuses_a_document_that_is_not_a_bootstrap(tmp_path: Path) -> None:
    copy = tmp_path / "envoy.yaml"
    copy.write_text("- static_resources\n")
    result = _run_checker(copy)
    assert result.returncode == 1
    assert "must be a mapping" in result.stderr
