"""Crash and restart: a sidecar killed with SIGKILL loses nothing it acknowledged and sends once.

The sidecar runs as a subprocess (`python -m tests.helpers.serve_with_test_models CONFIG`) so
that it can really be killed; a dcmtk storescu sends, a dcmtk storescp is the PACS. "Exactly
once" is counted at the PACS: storescp runs with `+uf` (a new file for every object received,
so a resend of the same SOP Instance would show as a second file), counted after a settle time.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from sidecar.journal import Journal
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import make_mr_series, write_series
from tests.helpers.ports import free_port
from tests.helpers.processes import SidecarProcess, wait_for
from tests.helpers.sidecar import write_config

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 20.0
# Long enough to cover kill + restart + the second half: a quiet time shorter than that gap
# would (by design) complete the half series on restart and send a superseding SR later.
QUIET_S = 20.0  # a restart takes 5-9 s on a loaded 2-core machine (torch import, model warm-up)
SETTLE_S = 1.5  # after the first SR arrives, time for a duplicate to show up if one were coming
UNIQUE_FILES = ["+uf"]  # storescp: one file per object received, so a duplicate cannot overwrite


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path], SidecarProcess]]:
    """Start sidecar subprocesses; whatever is still running at the end is killed."""
    started: list[SidecarProcess] = []

    def _start(config: Path) -> SidecarProcess:
        proc = SidecarProcess(config, tmp_path / f"sidecar-{len(started)}.log",
                              start_timeout_s=START_TIMEOUT_S).start()
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.kill()


def _write_series(folder: Path, n: int, seed: int, **extra: Any) -> list[Path]:
    datasets = make_mr_series(n, seed=seed)
    for ds in datasets:
        for key, value in extra.items():
            setattr(ds, key, value)
    return write_series(folder, datasets)


def _config(folder: Path, pacs_port: int, quiet_s: float) -> Path:
    routes = [{
        "name": "brightness-mr", "model": "brightness", "mode": "series", "match": {"modality": ["MR"]},
        "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": quiet_s,
    }]
    return write_config(folder, routes=routes, destinations=[
        {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}])


def _journal(config: Path) -> Journal:
    data_dir = Path(yaml.safe_load((config / "sidecar.yaml").read_text())["data_dir"])
    return Journal(f"sqlite:///{data_dir / 'journal.sqlite'}")


def _referenced_sop_uids(sr: pydicom.Dataset) -> set[str]:
    return {str(el.value) for el in sr.iterall() if el.keyword == "ReferencedSOPInstanceUID"}


class TestRestart:
    def test_series_split_by_a_kill_completes_after_restart_and_is_reported_once(
        self, tmp_path: Path, serve: Callable[[Path], SidecarProcess],
    ) -> None:
        """Half a series, SIGKILL before completion, restart, the rest: one SR covering all six slices."""
        files = _write_series(tmp_path / "in", 6, seed=71)
        series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        with StoreSCP(tmp_path / "pacs", ae_title="PACS", extra_args=UNIQUE_FILES) as pacs:
            cfg = _config(tmp_path / "conf", pacs.port, QUIET_S)
            first = serve(cfg)
            sent = storescu(files[:3], first.port, called_aet="SIDECAR")
            assert sent.returncode == 0, sent.stderr
            acknowledged_at = time.monotonic()
            first.kill()

            journal = _journal(cfg)
            try:
                row = journal.series(series_uid)
                assert row is not None and row.n_instances == 3
                assert row.state == "receiving", "the kill came too late: the series was already complete"
                assert journal.jobs(series_uid) == []
                assert all(Path(i.path).is_file() for i in journal.instances(series_uid))
            finally:
                journal.close()

            second = serve(cfg)
            sent = storescu(files[3:], second.port, called_aet="SIDECAR")
            assert sent.returncode == 0, sent.stderr
            gap = time.monotonic() - acknowledged_at
            assert gap < QUIET_S, f"restart took {gap:.1f} s, longer than the quiet time; the test cannot hold"

            pacs.wait_for_files(1, timeout=QUIET_S + 15)
            time.sleep(SETTLE_S)
            received = pacs.files()
            assert len(received) == 1, [p.name for p in received]
            sr = pydicom.dcmread(received[0])
            assert sr.Modality == "SR"
            assert str(sr.StudyInstanceUID) == study_uid
            source_uids = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
            assert source_uids <= _referenced_sop_uids(sr), "the SR does not cover the whole series"

            journal = _journal(cfg)
            try:
                wait_for(lambda: journal.series_delivered(series_uid), 5, "delivery recorded")
                row = journal.series(series_uid)
                assert row is not None and row.state == "complete" and row.n_instances == 6 and row.revision == 0
                assert [(o.destination, o.state) for o in journal.outbox(series_uid)] == [("pacs", "sent")]
            finally:
                journal.close()
            second.terminate()

    def test_result_owed_when_killed_is_delivered_once_after_restart(
        self, tmp_path: Path, serve: Callable[[Path], SidecarProcess],
    ) -> None:
        """Job done, PACS down, SIGKILL; restarted with the PACS up, the SR arrives once and never again."""
        files = _write_series(tmp_path / "in", 4, seed=72, ImagesInAcquisition=4)
        series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        cfg = _config(tmp_path / "conf", free_port(), quiet_s=30)  # nothing listens on that port
        first = serve(cfg)
        sent = storescu(files, first.port, called_aet="SIDECAR")
        assert sent.returncode == 0, sent.stderr

        journal = _journal(cfg)
        try:
            def attempted() -> bool:
                items = journal.outbox(series_uid)
                return bool(items) and all(o.attempts >= 1 and o.state == "pending" for o in items)

            wait_for(attempted, 15, "a failed delivery attempt")
            first.kill()
            owed = journal.outbox(series_uid)
            assert len(owed) == 1 and owed[0].state == "pending" and owed[0].last_error
            assert [j.state for j in journal.jobs(series_uid)] == ["done"]
        finally:
            journal.close()

        with StoreSCP(tmp_path / "pacs", ae_title="PACS", extra_args=UNIQUE_FILES) as pacs:
            svc = yaml.safe_load((cfg / "sidecar.yaml").read_text())
            svc["destinations"][0]["port"] = pacs.port
            (cfg / "sidecar.yaml").write_text(yaml.safe_dump(svc))

            second = serve(cfg)
            pacs.wait_for_files(1, timeout=15)
            time.sleep(SETTLE_S)
            received = pacs.files()
            assert len(received) == 1, [p.name for p in received]
            assert str(pydicom.dcmread(received[0]).SOPInstanceUID) == owed[0].sop_instance_uid
            journal = _journal(cfg)
            try:
                wait_for(lambda: journal.series_delivered(series_uid), 5, "delivery recorded")
            finally:
                journal.close()

            second.kill()
            third = serve(cfg)
            time.sleep(SETTLE_S)
            assert len(pacs.files()) == 1, "a restart after delivery sent the SR again"
            journal = _journal(cfg)
            try:
                assert [(o.sop_instance_uid, o.state) for o in journal.outbox(series_uid)] == [
                    (owed[0].sop_instance_uid, "sent")]
                assert [j.state for j in journal.jobs(series_uid)] == ["done"]
            finally:
                journal.close()
            third.terminate()


def _worker_pids(sidecar_pid: int) -> set[int]:
    """The sidecar's worker processes (multiprocessing spawn children, not its resource tracker)."""
    pids: set[int] = set()
    for children in Path(f"/proc/{sidecar_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                pids.add(int(pid))
    return pids


class TestWorkerProcesses:
    def test_killed_worker_process_is_replaced_and_its_job_delivered_once(
        self, tmp_path: Path, serve: Callable[[Path], SidecarProcess],
    ) -> None:
        """SIGKILL to the worker processes mid-job: the service goes on, new workers start, the
        job runs again (attempt 2) and the PACS gets exactly one SR."""
        files = _write_series(tmp_path / "in", 3, seed=73, ImagesInAcquisition=3)
        series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        with StoreSCP(tmp_path / "pacs", ae_title="PACS", extra_args=UNIQUE_FILES) as pacs:
            routes = [{"name": "brightness-mr", "model": "brightness", "mode": "series",
                       "match": {"modality": ["MR"]}, "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 30}]
            cfg = write_config(
                tmp_path / "conf", routes=routes,
                destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port,
                               "ae_title": "PACS"}],
                models={"brightness": {"options": {"delay_s": 3.0}}},
                worker={"poll_s": 0.05, "torch_threads": 1, "isolation": "process", "processes": 1,
                        "retry_initial_s": 0.2, "retry_max_s": 0.5},
            )
            sidecar = SidecarProcess(cfg, tmp_path / "sidecar-w.log", start_timeout_s=180.0).start()
            try:
                assert sidecar.proc is not None
                pid_of_service = sidecar.proc.pid
                wait_for(lambda: len(_worker_pids(pid_of_service)) == 2, 60, "two worker processes")
                before = _worker_pids(pid_of_service)
                # the streaming worker runs at worker.streaming_nice (-5) where the OS allows it
                def nices() -> list[int]:
                    return sorted(os.getpriority(os.PRIO_PROCESS, pid) for pid in before)

                if os.geteuid() == 0:
                    wait_for(lambda: nices() == [-5, 0], 30, "the streaming worker at niceness -5")
                else:
                    wait_for(lambda: "worker_priority_refused" in sidecar.log.read_text(), 30, "the refusal logged")
                    assert nices() == [0, 0]
                sent = storescu(files, sidecar.port, called_aet="SIDECAR")
                assert sent.returncode == 0, sent.stderr
                journal = _journal(cfg)
                try:
                    wait_for(lambda: [j.state for j in journal.jobs(series_uid)] == ["running"], 60,
                             "the series job running in a worker process")
                    for pid in before:
                        os.kill(pid, signal.SIGKILL)
                    wait_for(lambda: bool(_worker_pids(pid_of_service))
                             and not (_worker_pids(pid_of_service) & before), 60,
                             "replacement worker processes")
                    pacs.wait_for_files(1, timeout=90)
                    time.sleep(SETTLE_S)
                    received = pacs.files()
                    assert len(received) == 1, [p.name for p in received]
                    assert pydicom.dcmread(received[0]).Modality == "SR"
                    [job] = journal.jobs(series_uid)
                    assert job.state == "done" and job.attempts == 2
                    assert any(e.kind == "retry_scheduled" and "WorkerDied" in e.detail
                               for e in journal.events(series_uid))
                finally:
                    journal.close()
                assert "worker_process_replaced" in sidecar.log_tail() or "worker_process_replaced" in \
                    sidecar.log.read_text()
            finally:
                sidecar.terminate()
            assert sidecar.proc is None
