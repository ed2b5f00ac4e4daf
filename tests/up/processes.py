"""Processes and ports for the tests that run ``its-camera-ai up`` as a real process tree."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PORT_PICKER, is_free_port, server_port_range


@dataclass(frozen=True)
class Proc:
    """A process seen in /proc: its pid, command line and the start time telling it from a
    later process given the same pid."""

    pid: int
    command: tuple[str, ...]
    started: str

    @classmethod
    def read(cls, pid: int) -> Proc | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":
            return None  # ended, not yet reaped
        return cls(pid, tuple(part.decode() for part in command if part), fields[19])

    @property
    def parent(self) -> int:
        return int(Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[1])

    def running(self) -> bool:
        again = Proc.read(self.pid)
        return again is not None and again.started == self.started

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def children_of(pid: int) -> list[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := Proc.read(int(entry))) is not None:
            try:
                if proc.parent == pid:
                    found.append(proc)
            except OSError:
                continue
    return found


def free_port_block(size: int = 8) -> int:
    """A base port with ``size`` consecutive ports free on loopback, below the ephemeral range."""
    ports = server_port_range()
    for _ in range(200):
        base = PORT_PICKER.randrange(ports.start, ports.stop - size)
        if all(is_free_port(port) for port in range(base, base + size)):
            return base
    raise AssertionError("no block of free ports")
