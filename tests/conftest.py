"""Session-wide PHI scan: no log line or webhook body of the whole test run names a test patient.

- At session start every log record of the test process goes through the service's own chain
  (`configure_logging`, JSON lines, the `scrub_phi` processor) into `<basetemp>/phi-scan/`;
  a test that reconfigures logging (tests/unit/test_logging.py) gets the capture back after it.
- Subprocess sidecars write their stderr to `sidecar*.log` files under the session's basetemp
  (tests/integration/test_restart.py, tests/reliability/); those are scanned too.
- The `webhook_receiver` fixture is a local HTTP endpoint whose bodies land in the same folder.
- At session end every captured file is searched for the fake patient names, IDs and birth
  dates of tests/helpers/dicom_factory.py and train/phantoms; a hit fails the session and
  prints the offending lines.

Two more session-wide rules:
- A skip is a failure: a skipped test did not run, and CI installs what the suite needs instead
  (`scripts/install.sh --test`). On a machine that cannot (no root for a tmpfs, no PostgreSQL),
  `SIDECAR_ALLOW_SKIP=1` lets skips through as skips. xfail is not a skip and is not touched.
- /dev/null must still be a character device at the end: a path handed to a library that
  unlinks it once removed /dev/null from the machine, and every later `> /dev/null` broke.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest
import structlog

from sidecar.logging import configure_logging
from tests.helpers import dicom_factory

PHI_DIR_NAME = "phi-scan"
ALLOW_SKIP_ENV = "SIDECAR_ALLOW_SKIP"
_capture: dict[str, Any] = {}


def _needles() -> list[re.Pattern[str]]:
    """The test patients' names, IDs and birth dates, literal and as patterns."""
    literal = {dicom_factory.FAKE_PATIENT_NAME, dicom_factory.FAKE_PATIENT_ID, dicom_factory.FAKE_BIRTH_DATE}
    try:
        from train.phantoms.dicom_writer import Subject

        for f in fields(Subject):
            if f.name in ("patient_name", "patient_id", "patient_birth_date"):
                literal.add(str(f.default))
    except ImportError:  # train/ is optional for the scan; the patterns below still cover it
        pass
    literal.update({"PHANTOM^LGE", "PHANTOM^BREAST", "PHANTOM^HAND"})
    dates = {d for d in literal if re.fullmatch(r"\d{8}", d)}
    literal.update(f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in dates)
    patterns = [re.compile(re.escape(s), re.IGNORECASE) for s in sorted(literal) if len(s) >= 3]
    patterns += [
        re.compile(r"phantom\^\w+", re.IGNORECASE),  # every phantom / test person name (PN)
        re.compile(r"\bFAKE-[A-Z0-9]+"),  # test patient IDs (FAKE-0001, FAKE-ORTHANC, ...)
        re.compile(r"\bPH-(?:BR|HAND-)?\d{3,}"),  # phantom patient IDs (PH-0001, PH-BR000123, ...)
    ]
    return patterns


def _is_capturing() -> bool:
    stream = _capture.get("stream")
    factory = structlog.get_config().get("logger_factory")
    return isinstance(factory, structlog.stdlib.LoggerFactory) and any(
        getattr(h, "stream", None) is stream for h in logging.getLogger().handlers)


def _start_capture() -> None:
    configure_logging("info", "json", stream=_capture["stream"])


def pytest_sessionstart(session: pytest.Session) -> None:
    folder = session.config._tmp_path_factory.getbasetemp() / PHI_DIR_NAME  # type: ignore[attr-defined]  # pytest types no session-level tmp factory
    folder.mkdir(parents=True, exist_ok=True)
    _capture["folder"] = folder
    stream: IO[str] = (folder / "test-process.log").open("a", encoding="utf-8", buffering=1)
    _capture["stream"] = stream
    _start_capture()


def _fail_a_skip(rep: pytest.TestReport | pytest.CollectReport) -> None:
    if not rep.skipped or hasattr(rep, "wasxfail") or os.environ.get(ALLOW_SKIP_ENV):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    rep.outcome = "failed"
    rep.longrepr = (f"skipped, so it did not run: {reason}\n(install what it needs: scripts/install.sh --test;"
                    f" {ALLOW_SKIP_ENV}=1 lets skips through on a machine that cannot)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_a_skip(outcome.get_result())  # type: ignore[attr-defined]  # pluggy's result object


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_a_skip(outcome.get_result())  # type: ignore[attr-defined]  # pluggy's result object


@pytest.fixture(autouse=True)
def _phi_capture() -> Iterator[None]:
    """Put the session's log capture back if an earlier test replaced it."""
    if "stream" in _capture and not _is_capturing():
        _start_capture()
    yield


@pytest.fixture(scope="session")
def phi_scan_dir() -> Path:
    """The folder whose files the session-end PHI scan reads (put subprocess logs here)."""
    return Path(_capture["folder"])


class _WebhookReceiver:
    """A local webhook endpoint that keeps every body (also in the PHI scan folder)."""

    def __init__(self, folder: Path) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._file = folder / "webhook-bodies.log"
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                receiver._keep(body, dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # http.server's name
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver")

    def _keep(self, body: bytes, headers: dict[str, str]) -> None:
        with self._lock:
            self.bodies.append(body)
            self.headers.append(headers)
            with self._file.open("a", encoding="utf-8") as fh:
                fh.write(body.decode("utf-8", "replace").replace("\n", " ") + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def json_bodies(self) -> list[Any]:
        with self._lock:
            return [json.loads(b) for b in self.bodies]


@pytest.fixture
def webhook_receiver(phi_scan_dir: Path) -> Iterator[_WebhookReceiver]:
    receiver = _WebhookReceiver(phi_scan_dir)
    receiver._thread.start()
    try:
        yield receiver
    finally:
        receiver._server.shutdown()
        receiver._server.server_close()


def _scanned_files(basetemp: Path) -> list[Path]:
    files = [p for p in (basetemp / PHI_DIR_NAME).rglob("*") if p.is_file()]
    files += [p for p in basetemp.rglob("sidecar*.log") if p.is_file() and PHI_DIR_NAME not in p.parts]
    return sorted(set(files))


def _devnull_is_intact(session: pytest.Session) -> None:
    try:
        intact = stat.S_ISCHR(os.stat(os.devnull).st_mode)
    except OSError:
        intact = False
    if not intact:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", f"{os.devnull} is no longer a character device: a test or the code removed it",
                               red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _devnull_is_intact(session)
    stream = _capture.pop("stream", None)
    if stream is None:
        return
    logging.getLogger().handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is not stream]
    stream.close()
    basetemp = Path(_capture["folder"]).parent
    needles = _needles()
    hits: list[str] = []
    files = _scanned_files(basetemp)
    n_lines = 0
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                n_lines += 1
                if any(n.search(line) for n in needles):
                    hits.append(f"{path.relative_to(basetemp)}:{number}: {line.rstrip()[:400]}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if hits:
        if reporter is not None:
            reporter.write_sep("=", f"PHI scan: {len(hits)} line(s) name a test patient", red=True)
            for hit in hits[:50]:
                reporter.write_line(hit)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter is not None:
        reporter.write_line(f"PHI scan: {n_lines} log/webhook lines in {len(files)} files, no test patient data")
