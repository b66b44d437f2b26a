"""Peer processes for tests and benches: started as children, readiness polled, stopped by PID.

Every process a test or bench starts is stopped by its own PID: SIGTERM, then SIGKILL after a
grace period (`stop_by_pid`), or SIGKILL at once where a crash is the point (`kill_by_pid`).
`wait_until_ready` polls a readiness probe (C-ECHO, a REST call) and fails early, with the
tail of the log, when the process exits instead. `SidecarProcess` is the subprocess sidecar
(`python -m tests.helpers.serve_with_test_models CONFIG` or another entry point) that the
restart, kill and shared-journal tests start, kill and restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_MODULE = "tests.helpers.serve_with_test_models"
KILL_WAIT_S = 10.0


class NotReady(RuntimeError):
    """A started process exited, or did not pass its readiness probe in time (the log tail says why)."""


def stop_by_pid(proc: subprocess.Popen[bytes] | None, grace_s: float, kill_wait_s: float = KILL_WAIT_S) -> None:
    """SIGTERM by PID, SIGKILL when it has not exited after `grace_s`; nothing if it is gone already."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(kill_wait_s)


def kill_by_pid(proc: subprocess.Popen[bytes] | None, wait_s: float = KILL_WAIT_S) -> None:
    """SIGKILL by PID: no shutdown code runs, as in a power cut or an OOM kill."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(wait_s)


def wait_until_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], *, name: str, timeout_s: float,
    log_tail: Callable[[], str], what: str = "answer C-ECHO", poll_s: float = 0.05,
) -> None:
    """Poll `ready()` until it is true; `NotReady` when `proc` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotReady(f"{name} exited with {proc.returncode}: {log_tail()}")
        if ready():
            return
        time.sleep(poll_s)
    raise NotReady(f"{name} did not {what} within {timeout_s} s: {log_tail()}")


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Poll `predicate` (a journal state, a file count) until true; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s} s")
        time.sleep(poll_s)


def read_tail(path: Path, n: int = 3000) -> str:
    """The last `n` characters of a log file; empty when it cannot be read."""
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class SidecarProcess:
    """A sidecar subprocess on a config folder (`write_config`); ready when it answers C-ECHO.

    `module` is the entry point run with `python -m` from the repository root; its stdout and
    stderr go to `log` (appended, so a restart keeps the earlier run's lines).
    """

    def __init__(
        self, config: Path, log: Path, *, module: str = SERVE_MODULE, start_timeout_s: float = 20.0,
        stop_grace_s: float = 15.0,
    ) -> None:
        self.config, self.log, self.module = config, log, module
        self.start_timeout_s, self.stop_grace_s = start_timeout_s, stop_grace_s
        self.port = int(yaml.safe_load((config / "sidecar.yaml").read_text())["port"])
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Self:
        """Start the process without waiting for it (see `wait_ready`)."""
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, str(self.config)],
                                         cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        """Wait until the listener answers C-ECHO; kills the process and raises `NotReady` otherwise."""
        from tests.helpers.dcmtk import echoscu

        assert self.proc is not None, "spawn() first"

        def answers() -> bool:
            try:
                return echoscu(self.port, called_aet="SIDECAR", timeout_s=5).returncode == 0
            except subprocess.TimeoutExpired:  # a slow start on a loaded machine: not ready yet
                return False

        try:
            wait_until_ready(self.proc, answers,
                             name="sidecar", timeout_s=self.start_timeout_s, log_tail=self.log_tail)
        except NotReady:
            self.kill()
            raise

    def start(self) -> Self:
        """Spawn and wait until it answers C-ECHO."""
        self.spawn().wait_ready()
        return self

    def kill(self) -> None:
        """SIGKILL by PID: no shutdown code runs, as in a power cut or an OOM kill."""
        proc, self.proc = self.proc, None
        kill_by_pid(proc)

    def terminate(self) -> None:
        """SIGTERM by PID (a clean stop), SIGKILL after `stop_grace_s`."""
        proc, self.proc = self.proc, None
        stop_by_pid(proc, self.stop_grace_s)

    def log_tail(self) -> str:
        return read_tail(self.log)


__all__ = ["NotReady", "SidecarProcess", "kill_by_pid", "read_tail", "stop_by_pid", "wait_for", "wait_until_ready"]
