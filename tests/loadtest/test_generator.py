"""The load generator and the ghz configs, in the default suite (short).

The configs are checked against ghz's documented options without a ghz binary, then each is
replayed through the generator against a real secured host (decoder, analytics and query
on loopback, JWTs, PostgreSQL and Redis); the command line runs as a real process and
writes its JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.loadtest import (
    GHZ_CONFIG_KEYS,
    GROUPS,
    LoadPlan,
    load_ghz_config,
    plan_calls,
    run_load,
)
from its_camera_ai_client import aio_channel
from tests.security.conftest import SecureHost, running_secure_host

ROOT = Path(__file__).resolve().parents[2]
GHZ_DIR = ROOT / "loadtest" / "ghz"
CAMERA = "loadcam"
# Every unary read of QueryService and CameraService has a config (streams are not rated
# in calls per second; see loadtest/README.md).
EXPECTED_CALLS = {
    "its.query.v1.QueryService." + rpc
    for rpc in ("GetTrafficCounts", "GetTrafficSummary", "ListEvents", "GetEvent", "GetCameraStats")
} | {"its.camera.v1.CameraService." + rpc for rpc in GROUPS["cameras"]}


def test_ghz_configs_use_only_ghz_options_and_parse_as_requests(tmp_path: Path) -> None:
    configs = [load_ghz_config(path, ROOT) for path in sorted(GHZ_DIR.glob("*.json"))]
    assert {c.raw["call"] for c in configs} == EXPECTED_CALLS
    for config in configs:
        assert set(config.raw) <= GHZ_CONFIG_KEYS
        assert config.raw["metadata"] == {"authorization": "Bearer ${ITS_TOKEN}"}
        assert config.raw["insecure"] is True  # TLS flags come from the command line

    good = json.loads((GHZ_DIR / "get_camera.json").read_text())
    for change, fault in (
        ({"concurency": 4}, "concurency: not a ghz config option"),
        ({"duration": "10 seconds"}, "duration: '10 seconds' is not a Go duration"),
        ({"call": "its.camera.v1.CameraService.Nope"}, "call: its.camera.v1.CameraService.Nope"),
        ({"data": {"nmae": "x"}}, "data: "),
        ({"concurrency": "4"}, "concurrency: '4' has the wrong type"),
        ({"proto": "its/nope.proto"}, "proto: its/nope.proto not found"),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=f"bad.json: {fault}"):
            load_ghz_config(bad, ROOT)


@pytest.fixture
async def served(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[SecureHost]:
    async with running_secure_host(postgres_dsn, tmp_path, with_inference=False) as host:
        async with aio_channel(host.target, token=host.token("operator")) as channel:
            await camera_service_pb2_grpc.CameraServiceStub(channel).CreateCamera(
                camera_service_pb2.CreateCameraRequest(
                    camera_id=CAMERA,
                    camera=camera_pb2.Camera(source_uri="sim://road", enabled=False),
                )
            )
        yield host


async def _cli(*argv: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "its_camera_ai", "loadtest", *argv
    )
    return await asyncio.wait_for(process.wait(), 60)


async def test_load_runs_and_ghz_replay_against_a_real_host(
    served: SecureHost, tmp_path: Path
) -> None:
    token = served.token("viewer")
    target = served.target

    # The command line, closed loop over the query mix: every RPC called, none failed.
    report_file = tmp_path / "query.json"
    args = ("--target", target, "--token", token, "--duration", "1.5", "--json")
    assert await _cli("query", *args, str(report_file), "--concurrency", "4") == 0
    report = json.loads(report_file.read_text())
    assert report["mode"] == "closed"
    assert report["total"]["errors"] == {}
    assert set(report["by_rpc"]) == set(GROUPS["query"])
    for rpc in report["by_rpc"].values():
        ms = rpc["latency_ms"]
        assert rpc["calls"] > 0
        assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]

    # Open loop at a rate: about rate x duration calls, cameras listed by the generator.
    report_file = tmp_path / "cameras.json"
    assert await _cli("cameras", *args, str(report_file), "--rate", "40/s") == 0
    report = json.loads(report_file.read_text())
    assert report["mode"] == "open"
    assert report["rate"] == 40
    assert 40 <= report["total"]["calls"] <= 62
    assert report["total"]["errors"] == {}

    # Failures are counted by status code, not raised: an unknown camera, no credential.
    plan = LoadPlan(target, plan_calls(["GetCamera"], ["no-such-camera"]), duration_s=0.3,
                    concurrency=2, token=token)  # fmt: skip
    missing = (await run_load(plan)).as_dict()["total"]
    assert missing["ok"] == 0
    assert set(missing["errors"]) == {"NOT_FOUND"}
    anonymous = LoadPlan(target, plan_calls(["ListCameras"], [CAMERA]), duration_s=0.3)
    assert set((await run_load(anonymous)).as_dict()["total"]["errors"]) == {"UNAUTHENTICATED"}

    # Each ghz config replayed: its call, data, metadata (the token) and concurrency.
    variables = {"ITS_TOKEN": token, "ITS_CAMERA": CAMERA,
                 "ITS_EVENT": f"cameras/{CAMERA}/events/none"}  # fmt: skip
    for path in sorted(GHZ_DIR.glob("*.json")):
        config = load_ghz_config(path, ROOT)
        replay = (await run_load(config.plan(variables, target=target, duration_s=0.3))).as_dict()
        total = replay["total"]
        assert total["calls"] > 0, path.name
        assert replay["concurrency"] == config.raw["concurrency"]
        # No event exists on a fresh host: GetEvent's answer is the server's NOT_FOUND.
        expected = {"NOT_FOUND"} if path.name == "get_event.json" else set()
        assert set(total["errors"]) == expected, (path.name, total)
