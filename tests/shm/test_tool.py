"""The operator tool (list / clean) and the metrics export."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import posix_ipc
from prometheus_client import CollectorRegistry, generate_latest

from its_camera_ai import shm

from . import _procs as P
from .conftest import TEST_PREFIX


def _dead_ring(name: str) -> None:
    p = P.SPAWN.Process(target=P.create_and_exit, args=(name,))
    p.start()
    p.join(30)
    assert os.path.exists(f"{shm.SHM_DIR}/its-ring-{name}")


MINE = f"{TEST_PREFIX}{os.getpid()}-*"  # never touch rings of other tests or engineers


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = shm.main([*argv, "--match", MINE], out=out)
    return rc, out.getvalue()


def test_list_shows_geometry_and_writer_state(make_name) -> None:  # type: ignore[no-untyped-def]
    live, dead = make_name(), make_name()
    _dead_ring(dead)
    with shm.create(live, slots=3, max_frame_bytes=P.FRAME_BYTES) as w, shm.attach(live):
        w.write(P.pattern(1), P.WIDTH, P.HEIGHT)
        rc, text = _run("list")
        assert rc == 0
        lines = {ln.split()[0]: ln.split() for ln in text.splitlines()[1:]}
        assert text.splitlines()[0].split()[:2] == ["NAME", "SIZE"]
        assert lines[live][6:8] == ["alive", "1"]
        assert lines[live][2] == "3"
        assert lines[live][4] == "1"
        assert lines[live][5] == str(os.getpid())
        assert lines[dead][6] == "dead"
        rc, text = _run("list", "--json")
        rows = {r["name"]: r for r in map(json.loads, text.splitlines())}
        assert rows[live]["slot_count"] == 3
        assert rows[live]["max_frame_bytes"] == P.FRAME_BYTES
        assert rows[live]["readers"] == 1
        assert rows[live]["last_seq"] == 1
        assert rows[live]["age_s"] < 5
        assert rows[dead]["state"] == "dead"


def test_clean_removes_only_stale_rings_and_their_semaphores(make_name) -> None:  # type: ignore[no-untyped-def]
    live, dead, closed = make_name(), make_name(), make_name()
    _dead_ring(dead)
    # A reader that attached to the dead ring left its semaphore behind.
    shm.attach(dead).close()
    assert os.path.exists(f"{shm.SHM_DIR}/sem.its-ring-{dead}.r0")
    shm.create(closed, slots=2, max_frame_bytes=100).close(unlink=False)
    # An orphan semaphore of a ring long gone, and a temporary of a creator that died.
    orphan = make_name()
    posix_ipc.Semaphore(f"/its-ring-{orphan}.r3", posix_ipc.O_CREX, 0o600, 0).close()
    tmp = posix_ipc.SharedMemory(
        f"/its-ring-{orphan}.new-999999999-abcd", posix_ipc.O_CREX, 0o600, 16
    )
    os.close(tmp.fd)
    with shm.create(live, slots=2, max_frame_bytes=100):
        rc, text = _run("clean", "--dry-run")
        assert rc == 0
        for entry in (f"its-ring-{dead}", f"its-ring-{closed}", f"sem.its-ring-{dead}.r0"):
            assert f"would remove {entry}\n" in text
            assert os.path.exists(f"{shm.SHM_DIR}/{entry}")
        assert live not in text
        rc, text = _run("clean")
        assert rc == 0
        for entry in (
            f"its-ring-{dead}",
            f"its-ring-{closed}",
            f"sem.its-ring-{dead}.r0",
            f"sem.its-ring-{orphan}.r3",
            f"its-ring-{orphan}.new-999999999-abcd",
        ):
            assert f"removed {entry}\n" in text
            assert not os.path.exists(f"{shm.SHM_DIR}/{entry}")
        assert os.path.exists(f"{shm.SHM_DIR}/its-ring-{live}")
        assert live not in text


def test_clean_corrupt_needs_consent(ring_name: str) -> None:
    mem = posix_ipc.SharedMemory(f"/its-ring-{ring_name}", posix_ipc.O_CREX, 0o600, 100)
    os.close(mem.fd)
    info = shm.list_rings(match=ring_name)
    assert len(info) == 1
    assert info[0].state == "corrupt"
    assert "truncated" in (info[0].error or "")
    _run("clean")
    assert os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")
    _, text = _run("clean", "--include-corrupt")
    assert f"removed its-ring-{ring_name}\n" in text
    assert not os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")


def test_clean_min_age_spares_recent_rings(ring_name: str) -> None:
    shm.create(ring_name, slots=2, max_frame_bytes=100).close(unlink=False)
    assert shm.clean_rings(min_age=3600, match=ring_name) == []
    assert os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")
    assert shm.clean_rings(match=ring_name) == [f"its-ring-{ring_name}"]
    assert not os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")


def test_shm_subcommand_of_the_one_cli(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=100):
        res = subprocess.run(
            [sys.executable, "-m", "its_camera_ai", "shm", "list", "--match", ring_name],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 0, res.stderr
    assert ring_name in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "its_camera_ai", "shm"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "usage" in res.stderr


def test_prometheus_metrics(ring_name: str) -> None:
    registry = CollectorRegistry()
    shm.enable_metrics(registry)
    shm.enable_metrics(registry)  # idempotent
    with shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES) as w:
        r = shm.attach(ring_name)
        w.write(P.pattern(1), P.WIDTH, P.HEIGHT)
        assert r.read_next(timeout=1) is not None
        for _ in range(8):
            w.write(P.pattern(w.last_sequence + 1), P.WIDTH, P.HEIGHT)
        assert r.read_next(timeout=1) is not None  # lapped: an overrun, 7 dropped
        r.close()  # closed readers' counts are kept
        text = generate_latest(registry).decode()
    label = f'{{ring="{ring_name}"}}'
    assert f"shm_frames_written_total{label} 9.0" in text
    assert f"shm_frames_read_total{label} 2.0" in text
    assert f"shm_frames_dropped_total{label} 7.0" in text
    assert f"shm_overruns_total{label} 1.0" in text
    assert f"shm_handoff_latency_seconds_count{label} 2.0" in text
    assert f'shm_handoff_latency_seconds_bucket{{le="+Inf",ring="{ring_name}"}} 2.0' in text
