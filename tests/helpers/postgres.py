"""A throwaway PostgreSQL cluster for tests: initdb into a temporary folder, 127.0.0.1 only.

`postgres_cluster()` starts one cluster per test process, the first time a test asks, and stops
it by its postmaster PID when the process exits. Each test takes a fresh database from it
(`PostgresCluster.fresh_url()`). Where the server cannot be had — no PostgreSQL binaries (Debian
package `postgresql`), no psycopg (`pip install .[postgres]`), running as root without a
`postgres` user — `require_postgres()` skips the test and says why; it never passes silently.

As root the cluster runs as the `postgres` user (`initdb` refuses root) through `su`; otherwise
as the current user. The cluster trusts local connections and listens on a free port on
127.0.0.1 and on a Unix socket inside its own folder; `fsync` is off unless `durable=True`
(a throwaway cluster for tests, not a site's database).
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import itertools
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.ports import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
_counter = itertools.count()


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: $SIDECAR_PG_BINDIR, Debian's layout, or PATH."""
    env = os.environ.get("SIDECAR_PG_BINDIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def unavailable_reason() -> str | None:
    """Why a PostgreSQL test cannot run here, or None when it can."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg 3 is not installed (pip install '.[postgres]')"
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql, or set SIDECAR_PG_BINDIR)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


class PostgresCluster:
    """One initdb'd cluster in a temporary folder; started by `start()`, stopped by PID."""

    def __init__(self, durable: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries not found")
        self.bindir = bindir
        self.durable = durable
        self.port = free_port()
        self.host = "127.0.0.1"
        self.folder = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.pid: int | None = None
        self._as_root = os.geteuid() == 0

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]
        else:
            cmd = argv
        return subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)

    def start(self) -> PostgresCluster:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        init = self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                          "-E", "UTF8", "--no-sync"])
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
        opts = [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-k {self.folder}",
                "-c max_connections=200", "-c shared_buffers=32MB"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        started = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                             "-o", " ".join(opts), "-w", "-t", str(int(START_TIMEOUT_S)), "start"])
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stderr[-1000:]} {self.log_tail()}")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID (SIGINT), then remove the folder."""
        pid, self.pid = self.pid, None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown when fast did not finish
            except ProcessLookupError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def fresh_url(self, prefix: str = "t") -> str:
        """A URL to a new, empty database."""
        return self.create_database(f"{prefix}_{os.getpid()}_{next(_counter)}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


_cluster: PostgresCluster | None = None
_failed: str | None = None


def require_postgres() -> PostgresCluster:
    """This process's cluster (started on first use); skips the calling test when none can be had."""
    global _cluster, _failed
    reason = _failed or unavailable_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL journal tests skipped: {reason}")
    if _cluster is None:
        try:
            _cluster = PostgresCluster().start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _failed = f"could not start a throwaway cluster: {exc}"
            pytest.skip(f"PostgreSQL journal tests skipped: {_failed}")
        atexit.register(_cluster.stop)
    return _cluster
