"""dcmtk as real peers: `StoreSCP` (a PACS stand-in) and the `storescu`/`echoscu` clients.

Every dcmtk process gets TCP_NODELAY=1 in its environment (Debian's build otherwise stalls
~40 ms per image) and only ever talks to 127.0.0.1. `StoreSCP` is stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers.ports import free_port, nodelay_env
from tests.helpers.processes import NotReady, read_tail, stop_by_pid, wait_until_ready

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def _require(tool: str) -> str:
    # pynetdicom installs Python apps named storescp/storescu/echoscu into the venv's bin/,
    # which would shadow dcmtk's on PATH: look in the system folders first.
    path = shutil.which(tool, path="/usr/bin:/bin:/usr/local/bin") or shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} not found: install the Debian package 'dcmtk'")
    return path


class StoreSCP:
    """dcmtk `storescp` on a free loopback port, writing every received file into `folder`.

    Accepts all transfer syntaxes it supports (`+xa`) and answers to `ae_title`.
    """

    def __init__(
        self, folder: Path | str | None = None, ae_title: str = "STORESCP", extra_args: Sequence[str] = ()
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="storescp-")
        self.folder = Path(folder) if folder is not None else Path(self._tmp.name) / "received"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = free_port()
        self.host = HOST
        self._extra = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(self._tmp.name) / "storescp.log"
        # storescp writes each file in place as it arrives; it runs --exec-on-reception only once a
        # file is whole, so a marker named like the file says it is complete.
        self._done = Path(self._tmp.name) / "done"
        self._done.mkdir()

    def start(self) -> Self:
        cmd = [_require("storescp"), "-od", str(self.folder), "+xa", "-aet", self.ae_title,
               "-xcr", f"touch {self._done}/#f", *self._extra, str(self.port)]
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=nodelay_env())
        try:
            wait_until_ready(self._proc, self.answers_echo, name="storescp", timeout_s=START_TIMEOUT_S,
                             log_tail=self.log_text)
        except NotReady:
            self.stop()
            raise
        return self

    def answers_echo(self) -> bool:
        """The readiness probe: C-ECHO with dcmtk `echoscu` succeeds."""
        return echoscu(self.port, called_aet=self.ae_title).returncode == 0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_by_pid(proc, STOP_TIMEOUT_S, kill_wait_s=STOP_TIMEOUT_S)

    def files(self) -> list[Path]:
        """Received files, each whole (storescp names them <modality>.<SOP Instance UID>)."""
        done = {p.name for p in self._done.iterdir()}
        return sorted(p for p in self.folder.iterdir() if p.is_file() and p.name in done)

    def wait_for_files(self, n: int, timeout: float = 10.0) -> list[Path]:
        """Wait until at least `n` files have arrived; raises TimeoutError with what did."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.files()
            if len(found) >= n:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(found)} of {n} files arrived in {timeout} s")
            time.sleep(0.02)

    def log_text(self) -> str:
        return read_tail(self._log, 4000)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._tmp.cleanup()


def storescu(
    paths: Sequence[Path | str], port: int, aet: str = "STORESCU", called_aet: str = "ANY-SCP",
    extra_args: Sequence[str] = (), timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk `storescu` to 127.0.0.1:`port` over one association."""
    cmd = [_require("storescu"), "-aet", aet, "-aec", called_aet, *extra_args, HOST, str(port),
           *(str(p) for p in paths)]
    return subprocess.run(cmd, capture_output=True, text=True, env=nodelay_env(), timeout=timeout_s, check=False)


def echoscu(
    port: int, aet: str = "ECHOSCU", called_aet: str = "ANY-SCP", extra_args: Sequence[str] = (),
    timeout_s: float = 10.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO 127.0.0.1:`port` with dcmtk `echoscu`; returncode 0 when it answered Success."""
    cmd = [_require("echoscu"), "-aet", aet, "-aec", called_aet, "-to", "5", *extra_args, HOST, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, env=nodelay_env(), timeout=timeout_s, check=False)


__all__ = ["StoreSCP", "echoscu", "storescu"]
