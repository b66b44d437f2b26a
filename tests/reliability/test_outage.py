"""A destination that is down for a while, beside one that is up.

A real sidecar sends every SR to two dcmtk storescp PACS. The second is not running when the
results are made (its port is reserved in the configuration, nothing listens): its results
queue and are retried with backoff, the first receives everything without waiting for it,
and when the second starts later every result reaches it exactly once.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from sidecar.app import Seams, Sidecar
from tests.helpers.dcmtk import StoreSCP
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.models import BrightnessModel
from tests.helpers.ports import free_port
from tests.helpers.processes import wait_for
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

N_SERIES = 3
DOWN_S = 4.0
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 1.5


def _send_series(app: Sidecar, seed: int) -> str:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", app.port, ae_title="SIDECAR")
    assert assoc.is_established
    series = make_mr_series(2, seed=seed, images_in_acquisition=2)
    try:
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    return str(series[0].SeriesInstanceUID)


def _outbox(app: Sidecar, destination: str) -> list[tuple[str, int, str | None]]:
    db = app.settings.service.data_dir / "journal.sqlite"
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("SELECT state, attempts, last_error FROM outbox WHERE destination = ?",
                           (destination,)).fetchall()
    finally:
        con.close()


def _uids(pacs: StoreSCP) -> Counter[str]:
    return Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs.files())


def test_down_destination_queues_backs_off_and_catches_up_without_delaying_the_other(tmp_path: Path) -> None:
    """PACS B down for 4 s: A gets every SR at once, B's retries back off, B gets every SR once when it starts."""
    b_port = free_port()
    with StoreSCP(tmp_path / "a", ae_title="PACSA", extra_args=["+uf"]) as pacs_a:
        destinations = [
            {"kind": "dicom", "name": "a", "host": "127.0.0.1", "port": pacs_a.port, "ae_title": "PACSA",
             "timeout_s": 5},
            {"kind": "dicom", "name": "b", "host": "127.0.0.1", "port": b_port, "ae_title": "PACSB", "timeout_s": 5},
        ]
        routes = [{"name": "mr", "model": "brightness", "mode": "series", "match": {"modality": ["MR"]},
                   "outputs": ["sr"], "destinations": ["a", "b"], "quiet_s": 5.0}]
        config = write_config(tmp_path / "conf", routes=routes, destinations=destinations, sender={
            "backoff_initial_s": BACKOFF_INITIAL_S, "backoff_max_s": BACKOFF_MAX_S, "poll_s": 0.05,
            "echo_on_start": True, "max_attempts": 50})
        with running_sidecar(config) as app:
            t0 = time.monotonic()
            for i in range(N_SERIES):
                _send_series(app, seed=900 + i)
            pacs_a.wait_for_files(N_SERIES, timeout=15)
            a_done = time.monotonic() - t0
            assert a_done < 10.0, f"destination A waited {a_done:.1f} s behind the down destination"

            time.sleep(max(0.0, DOWN_S - a_done))
            queued = _outbox(app, "b")
            assert len(queued) == N_SERIES and all(state == "pending" for state, _, _ in queued)
            attempts = [n for _, n, _ in queued]
            # Without backoff a 0.05 s poll would have tried ~80 times in 4 s; with it a handful.
            assert all(2 <= n <= 10 for n in attempts), f"attempts while down: {attempts}"
            assert all("cannot connect" in (err or "") for _, _, err in queued)

            pacs_b = StoreSCP(tmp_path / "b", ae_title="PACSB", extra_args=["+uf"])
            pacs_b.port = b_port  # the port the configuration names, free until now
            with pacs_b:
                t_up = time.monotonic()
                pacs_b.wait_for_files(N_SERIES, timeout=BACKOFF_MAX_S * 2 + 10)
                caught_up = time.monotonic() - t_up
                time.sleep(1.0)
                uids_b = _uids(pacs_b)
            uids_a = _uids(pacs_a)
            assert set(uids_a) == set(uids_b) and len(uids_a) == N_SERIES
            assert max(uids_a.values()) == 1 and max(uids_b.values()) == 1, "a result arrived twice"
            assert all(state == "sent" for state, _, _ in _outbox(app, "b"))
            assert caught_up < BACKOFF_MAX_S + 5.0
    print(f"\noutage: A received {N_SERIES} SRs in {a_done:.1f} s; B down {DOWN_S:.0f} s with attempts {attempts}, "
          f"caught up {caught_up:.1f} s after it started")


class GatedModel(BrightnessModel):
    """Waits in predict until the test opens the gate, so the disk can fill while a job runs."""

    gate = threading.Event()
    started = threading.Event()

    def predict(self, batch):
        GatedModel.started.set()
        assert GatedModel.gate.wait(60.0)
        return super().predict(batch)


def _gated(weights: Path | None = None, options: dict[str, Any] | None = None) -> GatedModel:
    return GatedModel()


def _ready(app: Sidecar) -> tuple[int, dict[str, Any]]:
    assert app.web is not None
    try:
        with urllib.request.urlopen(app.web.url + "/readyz", timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs as the data disk (needs root to mount; skipped otherwise), unmounted after."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_data_disk_makes_readyz_not_ready_and_work_resumes_once_freed(
    tmp_path: Path, small_disk: Path
) -> None:
    """The data disk fills while a job runs: its result write is refused by the watermark, the job
    is put back (transient), /readyz names the disk; once space is freed the SR goes out unaided."""
    GatedModel.gate.clear()
    GatedModel.started.clear()
    out = tmp_path / "pacs"
    cfg = write_config(
        tmp_path / "cfg", data_dir=str(small_disk / "var"),
        limits={"min_free_disk_bytes": 8 << 20},
        worker={"poll_s": 0.05, "torch_threads": 1, "retry_initial_s": 0.3, "retry_max_s": 1.0,
                "max_attempts": 50},
        destinations=[{"kind": "folder", "name": "pacs", "path": str(out)}],
        routes=[{"name": "gated-mr", "model": "gated", "mode": "series", "match": {"modality": ["MR"]},
                 "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 1.0}],
        models={"gated": {}},
        web={"enabled": True, "port": 0},
    )
    with running_sidecar(cfg, Seams(factories={"gated": _gated})) as app:
        uid = _send_series(app, seed=77)
        assert GatedModel.started.wait(30.0), "the job never started"
        filler = small_disk / "filler"
        free = shutil.disk_usage(small_disk).free
        with filler.open("wb") as f:  # leave ~2 MiB: under the 8 MiB watermark, room for the journal
            f.write(b"\0" * max(0, free - (2 << 20)))
        status, body = _ready(app)
        assert status == 503 and not body["checks"]["disk"]["ok"]
        assert "watermark" in body["checks"]["disk"]["detail"]
        GatedModel.gate.set()
        wait_for(lambda: any(e.kind == "retry_scheduled" for e in app.journal.events(uid)), 30.0,
                 "the job put back after its result write was refused")
        [job] = app.journal.jobs(uid)
        assert job.state in ("queued", "running") and "SpoolFull" in (job.reason or "")
        assert not list(out.glob("**/*.dcm")) if out.exists() else True
        assert _ready(app)[0] == 503
        filler.unlink()
        wait_for(lambda: app.journal.jobs(uid)[0].state == "done", 60.0, "the job done after space returned")
        wait_for(lambda: app.journal.series_delivered(uid), 30.0, "the SR delivered")
        wait_for(lambda: _ready(app)[0] == 200, 30.0, "/readyz ready again")
        assert len(app.journal.outbox(uid)) == 1
