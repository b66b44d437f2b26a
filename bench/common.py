"""What both benchmarks share: test slices on disk, peer processes started and stopped by PID.

Every process a bench starts is a child of the bench, listens on 127.0.0.1 only and is stopped
by its own PID (SIGTERM, then SIGKILL after a grace period). dcmtk tools are called by their
/usr/bin path (pynetdicom installs Python scripts of the same names into the venv) with
TCP_NODELAY=1 in their environment.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers.dcmtk import _require, echoscu
from tests.helpers.dicom_factory import fake_uid, make_mr
from tests.helpers.ports import free_port, nodelay_env
from tests.helpers.processes import read_tail, stop_by_pid, wait_until_ready

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def write_slices(
    folder: Path, n: int, *, size: int, seed: int, description: str | None = None,
    images_in_acquisition: int | None = None,
) -> list[Path]:
    """`n` uint16 MR slices (`size` x `size`) of one new series, written once as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    study = fake_uid("bench-study", seed)
    series = fake_uid("bench-series", seed, size)
    paths = []
    for i in range(1, n + 1):
        ds = make_mr(seed=seed, study_uid=study, series_uid=series, instance_number=i, size=size,
                     images_in_acquisition=images_in_acquisition)
        if description is not None:
            ds.SeriesDescription = description
        p = folder / f"{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


class Child:
    """A child process started by a bench, stopped by its PID only."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(list(cmd), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env or dict(os.environ), cwd=cwd or REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, grace_s: float = 10.0) -> None:
        stop_by_pid(self.proc, grace_s, kill_wait_s=grace_s)
        self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        return read_tail(self.log_path, n)


def wait_echo(child: Child, port: int, called_aet: str, timeout_s: float = 60.0) -> None:
    """Wait until the peer answers C-ECHO (dcmtk echoscu)."""
    wait_until_ready(child.proc, lambda: echoscu(port, called_aet=called_aet).returncode == 0, name=child.name,
                     timeout_s=timeout_s, log_tail=child.log_tail, poll_s=0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout_s: float = 30.0, window_s: float = 0.3, max_cpu_s: float = 0.03) -> None:
    """Wait until a process used less than `max_cpu_s` CPU over `window_s` (start-up work done)."""
    deadline = time.monotonic() + timeout_s
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = cpu_seconds(pid)
        if now - last < max_cpu_s:
            return
        last = now


def storescu(paths: Sequence[Path], port: int, called_aet: str, timeout_s: float = 120.0) -> float:
    """Send `paths` over one association with dcmtk storescu; returns wall seconds until it exits."""
    cmd = [_require("storescu"), "-aet", "BENCHSCU", "-aec", called_aet, HOST, str(port),
           *(str(p) for p in paths)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=nodelay_env(), timeout=timeout_s, check=False)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed ({res.returncode}): {res.stderr[-2000:]}")
    return elapsed


def start_storescp(folder: Path, log_dir: Path, ae_title: str = "STORESCP") -> tuple[Child, int]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [_require("storescp"), "-od", str(folder), "-aet", ae_title, str(port)]
    child = Child("storescp", cmd, log_dir / f"storescp-{port}.log", env=nodelay_env())
    wait_echo(child, port, ae_title)
    return child, port


def start_python(module: str, args: Sequence[str], log_dir: Path, name: str,
                 env: dict[str, Any] | None = None) -> Child:
    """`python -m module args...` from the repository root, with this interpreter."""
    full_env = dict(os.environ)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return Child(name, [sys.executable, "-m", module, *args], log_dir / f"{name}.log", env=full_env)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end of the run"
