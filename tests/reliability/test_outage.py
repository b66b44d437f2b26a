"""A destination that is down for a while, beside one that is up.

A real sidecar sends every SR to two dcmtk storescp PACS. The second is not running when the
results are made (its port is reserved in the configuration, nothing listens): its results
queue and are retried with backoff, the first receives everything without waiting for it,
and when the second starts later every result reaches it exactly once.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from sidecar.app import Sidecar
from tests.helpers.dcmtk import StoreSCP
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.ports import free_port
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
