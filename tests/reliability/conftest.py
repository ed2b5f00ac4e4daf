"""Dependencies a test may stop and restart: a private Redis and a private PostgreSQL.

The machine's own servers are shared by every test, so fault injection never touches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests.conftest import free_port

SERVICE_START_WITHIN_S = 60.0
SERVICE_STOP_WITHIN_S = 20.0


class ServiceProcess:
    """``its-camera-ai serve <service>`` as a child process on loopback, configured by
    ``settings`` (environment variables) on top of the test's environment minus
    ``without`` prefixes; the same port across restarts."""

    def __init__(
        self, service: str, name: str, settings: dict[str, str], without: tuple[str, ...] = ()
    ) -> None:
        self.service = service
        self.name = name
        self.port = free_port()
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(without)}
        self.env = {
            **inherited,
            "ITS_GRPC__HOST": "127.0.0.1",
            "ITS_GRPC__PORT": str(self.port),
            "ITS_GRPC__DRAIN_SECONDS": "2",
            "ITS_HTTP__ENABLED": "false",
            "ITS_LOGGING__LEVEL": "WARNING",
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        command = [sys.executable, "-m", "its_camera_ai.cli", "serve", self.service]
        self.process = subprocess.Popen(command, env=self.env)  # noqa: ASYNC220 - returns at once
        # Ready = serving on its own port (a direct channel: a balancer's turn is untouched).
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), SERVICE_START_WITHIN_S)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    async def terminate(self) -> int:
        """SIGTERM, as a rolling restart stops an instance; its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.to_thread(self.process.wait, SERVICE_STOP_WITHIN_S)
        finally:
            self.kill()  # a no-op once it exited
        return status


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (.ci/run installs it)"
        self._process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def postgres_bin() -> Path:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    assert versions, "Debian's postgresql package is not installed (.ci/run installs it)"
    return versions[-1].parent


class PrivatePostgres:
    """A real PostgreSQL server of the test's own (Debian's binaries), on its own port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = postgres_bin()
        self._data = directory / "pgdata"
        self._log = directory / "postgres.log"
        self._as_postgres(
            [str(self._bin / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(self._data)]
        )

    def _as_postgres(self, command: list[str]) -> None:
        # initdb and postgres refuse to run as root.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._as_postgres(
            [
                str(self._bin / "pg_ctl"),
                "-D",
                str(self._data),
                "-l",
                str(self._log),
                "-w",
                "-o",
                f"-p {self.port} -k {self._data} -c listen_addresses=127.0.0.1",
                "start",
            ]
        )

    def stop(self) -> None:
        self._as_postgres(
            [str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "-w", "stop"]
        )


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not pytest's tmp_path: the postgres user must own the directory, and cannot enter root's.
    directory = Path(tempfile.mkdtemp(prefix="its-test-pg-"))
    shutil.chown(directory, "postgres", "postgres")
    server = PrivatePostgres(directory)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped by the test
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _child_pids(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # the process ended while we looked
            # "pid (comm) state ppid ...": comm may hold spaces, the state follows the last ")".
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                children.append(int(stat.parent.name))
    return children


def _runs(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie (reaped here when it is this process's child:
    a test process that made itself a subreaper adopts the postmasters pg_ctl leaves)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ReplicatedPostgres:
    """A primary and a hot standby made from it by ``pg_basebackup -R``, each on its own
    loopback port (Debian's binaries, as the postgres user), for failover tests.

    Replication is synchronous (``synchronous_standby_names = '*'``, ``synchronous_commit =
    remote_apply``): a commit returns once the standby has flushed and applied its WAL, so
    whatever the primary acknowledged survives the primary's loss and is already readable on
    the standby (``on``, flushed only, would be enough for durability). With asynchronous
    replication the last commits before a crash may never reach the standby, and promoting it
    would lose them. The standby is started without a synchronous standby of its own, so once
    promoted it commits alone, as Patroni's (non-strict) synchronous mode lets it.
    Replication connections from 127.0.0.1 are trusted by ``initdb -A trust``'s own
    pg_hba.conf.
    """

    def __init__(self, directory: Path) -> None:
        self.primary_port = free_port()
        self.standby_port = free_port()
        while self.standby_port == self.primary_port:
            self.standby_port = free_port()
        ports = (self.primary_port, self.standby_port)
        # What services use: libpq's (and asyncpg's) multi-host form, writable server only.
        self.dsn = "postgresql://postgres@{}/postgres?target_session_attrs=read-write".format(
            ",".join(f"127.0.0.1:{port}" for port in ports)
        )
        self.primary_dsn = f"postgresql://postgres@127.0.0.1:{self.primary_port}/postgres"
        self.standby_dsn = f"postgresql://postgres@127.0.0.1:{self.standby_port}/postgres"
        self._bin = postgres_bin()
        self._directory = directory
        self._primary = directory / "primary"
        self._standby = directory / "standby"
        self._held_receiver: int | None = None

    def _run(self, command: str, *arguments: str) -> str:
        # As postgres: initdb and postgres refuse to run as root.
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self._bin / command), *arguments],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def _start(self, data: Path, port: int, *settings: str) -> None:
        options = [f"-p {port}", f"-k {data}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {setting}" for setting in settings]
        log = str(self._directory / f"{data.name}.log")
        self._run("pg_ctl", "-D", str(data), "-l", log, "-w", "-o", " ".join(options), "start")

    def start(self) -> None:
        self._run("initdb", "-A", "trust", "-U", "postgres", "-D", str(self._primary))
        # pg_ctl hands the options to a shell: the quotes keep "*" from being globbed.
        self._start(
            self._primary,
            self.primary_port,
            "wal_level=replica",
            "max_wal_senders=4",
            "synchronous_standby_names='*'",
            "synchronous_commit=remote_apply",
        )
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary_port),
            "-U",
            "postgres",
            "-D",
            str(self._standby),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        self._start(self._standby, self.standby_port, "hot_standby=on")
        self._await_synchronous_standby()

    def _await_synchronous_standby(self) -> None:
        query = "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
        deadline = time.monotonic() + 15
        while (
            self._run(
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary_port),
                "-U",
                "postgres",
                "-Atc",
                query,
            ).strip()
            != "1"
        ):
            assert time.monotonic() < deadline, "the standby never became synchronous"
            time.sleep(0.1)

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every process of it, as a crashed host: no
        shutdown checkpoint, nothing said to clients or the standby."""
        postmaster = int((self._primary / "postmaster.pid").read_text().split()[0])
        processes = [postmaster, *_child_pids(postmaster)]
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_runs(pid) for pid in processes):
            assert time.monotonic() < deadline, "the killed primary's processes did not exit"
            time.sleep(0.02)

    def hold_replication(self) -> None:
        """Freeze the standby's WAL receiver (SIGSTOP): commits on the primary then wait for
        it, as they do while a synchronous standby or the network to it stalls."""
        postmaster = int((self._standby / "postmaster.pid").read_text().split()[0])
        for pid in _child_pids(postmaster):
            with contextlib.suppress(OSError):
                if "walreceiver" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGSTOP)
                    self._held_receiver = pid
                    return
        raise AssertionError("the standby has no WAL receiver")

    def release_replication(self) -> None:
        if self._held_receiver is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._held_receiver, signal.SIGCONT)
            self._held_receiver = None

    def promote(self) -> None:
        """Promote the standby, as an operator (or Patroni) would; returns once it writes."""
        self._run("pg_ctl", "-D", str(self._standby), "-w", "promote")

    def stop(self) -> None:
        self.release_replication()  # a stopped process would not obey the stop
        for data in (self._primary, self._standby):
            with contextlib.suppress(RuntimeError):  # never started, or killed by the test
                self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")


@pytest.fixture
def replicated_postgres() -> Iterator[ReplicatedPostgres]:
    # Not pytest's tmp_path: the postgres user must own the directory, and cannot enter root's.
    directory = Path(tempfile.mkdtemp(prefix="its-test-pg-pair-"))
    shutil.chown(directory, "postgres", "postgres")
    pair = ReplicatedPostgres(directory)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(directory, ignore_errors=True)


class PrivateRedisCluster:
    """A real Redis Cluster of the test's own on loopback: 3 masters, a replica each.

    A one-second node timeout makes a killed master's replica take over in a few seconds
    (the default, 15 s, would not fit a test). Each node gets an explicit bus port, probed
    free like its port: the default, port + 10000, lands in the ephemeral range, where any
    client's connection may hold it.
    """

    _LAUNCH_TRIES = 5

    def __init__(self, directory: Path, nodes: int = 6) -> None:
        self.ports: list[int] = []
        self._bus_ports: list[int] = []
        for _ in range(nodes):
            self.ports.append(self._unused_port())
            self._bus_ports.append(self._unused_port())
        self._directory = directory
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    def _unused_port(self) -> int:
        """A free port none of this cluster's nodes was given (free_port() may repeat one)."""
        while (port := free_port()) in {*self.ports, *self._bus_ports}:
            pass
        return port

    @property
    def url(self) -> str:
        """A startup node; the client learns the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def live_ports(self) -> list[int]:
        return [port for port in self.ports if port in self._processes]

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed (.ci/run installs it)"
        for node in range(len(self.ports)):
            self._launch_on_free_ports(node)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
        self._wait_until(lambda: all(self.is_ok(p) for p in self.ports), "the cluster never formed")
        # A replica that never synchronised would not be elected: wait for every link.
        self._wait_until(lambda: all(self._synced(p) for p in self.ports), "replicas never synced")

    def _launch_on_free_ports(self, node: int) -> None:
        """Start node ``node``, on other ports if its own were taken since they were probed
        (by another listener: ``free_port`` keeps clear of clients' ephemeral ports, the
        likely cause of a CI run's "a node did not start"): the node then exits at once."""
        for _ in range(self._LAUNCH_TRIES):
            if self._launch(self.ports[node]):
                return
            self.ports[node], self._bus_ports[node] = self._unused_port(), self._unused_port()
        raise AssertionError(f"no node started in {self._LAUNCH_TRIES} tries on fresh ports")

    def _launch(self, port: int) -> bool:
        """Whether the node on ``port`` came up; False when its process exited instead."""
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (.ci/run installs it)"
        bus_port = self._bus_ports[self.ports.index(port)]
        log = self._directory / f"node-{port}.log"
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
             "--cluster-config-file", str(self._directory / f"nodes-{port}.conf"),
             "--cluster-node-timeout", "1000", "--appendonly", "no", "--save", "",
             "--dir", str(self._directory), "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self._processes[port] = process  # stop() kills it, whatever happens next
        self._wait_until(
            lambda: process.poll() is not None or self.node_command(port, "PING"),
            f"the node on port {port} neither answered nor exited",
        )
        if process.poll() is None:
            return True
        del self._processes[port]
        tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
        print(f"redis node on port {port} exited at start: {tail}")
        return False

    def restart(self, port: int) -> None:
        """Start a killed node again: its nodes file brings it back into the cluster, with
        its slots if no replica took them, empty (no persistence)."""
        if not self._launch(port):
            raise AssertionError(f"the killed node could not restart on port {port}")

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_connect_timeout=0.2,
            socket_timeout=0.5,
            decode_responses=True,
        )

    @staticmethod
    def _wait_until(check: Callable[[], object], failure: str, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(redis.RedisError):
                if check():
                    return
            assert time.monotonic() < deadline, failure
            time.sleep(0.05)

    def node_command(self, port: int, *command: str) -> Any:
        with self._node(port) as node:
            return node.execute_command(*command)

    def is_ok(self, port: int) -> bool:
        """Whether the node says the cluster serves every slot (``cluster_state:ok``)."""
        return "cluster_state:ok" in str(self.node_command(port, "CLUSTER", "INFO"))

    def role(self, port: int) -> str:
        return str(self.node_command(port, "ROLE")[0])

    def _synced(self, port: int) -> bool:
        role = self.node_command(port, "ROLE")
        return bool(role[0] == "master" or role[3] == "connected")

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as a live node sees it."""
        slot = int(self.node_command(self.live_ports[0], "CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in self.node_command(self.live_ports[0], "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def replicas_of(self, port: int) -> list[int]:
        node_id = self.node_command(port, "CLUSTER", "MYID")
        replicas = self.node_command(port, "CLUSTER", "REPLICAS", node_id)
        # "<id> <ip>:<port>@<bus port> slave <master id> ..."
        return [int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in replicas]

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to the cluster, its peers find out by timeout."""
        process = self._processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self._processes):
            self.kill(port)


@pytest.fixture
def private_redis_cluster(tmp_path: Path) -> Iterator[PrivateRedisCluster]:
    cluster = PrivateRedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()  # also what start() left running when it failed
