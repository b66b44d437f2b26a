"""PHI: webhook bodies carry no patient data; the session-end scan (tests/conftest.py) would see it.

The webhook receiver keeps every body in the PHI scan folder, so the scan at the end of the
session reads what the sidecar really sent, beside every log line of the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from tests.conftest import _needles
from tests.helpers.dicom_factory import FAKE_BIRTH_DATE, FAKE_PATIENT_ID, FAKE_PATIENT_NAME, make_mr_series
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


class TestPhiScan:
    def test_needles_find_every_test_patient_and_nothing_else(self) -> None:
        """The scan's patterns match the fake names, IDs and birth dates, not ordinary log text."""
        needles = _needles()
        hits = [FAKE_PATIENT_NAME, FAKE_PATIENT_ID, FAKE_BIRTH_DATE, "1970-01-01", "PHANTOM^LGE",
                "Phantom^Orthanc", "PH-BR000123", "PH-HAND-000042", "FAKE-SENDER"]
        for text in hits:
            assert any(n.search(f'{{"event": "x", "v": "{text}"}}') for n in needles), text
        clean = ['{"event": "series_routed", "series_uid": "3f2a9c1d0b7e", "rule": "lge-phantom"}',
                 '{"event": "sidecar_ready", "port": 11112, "timestamp": "2026-01-02T10:15:00Z"}']
        assert not [c for c in clean if any(n.search(c) for n in needles)]

    def test_webhook_alerts_carry_no_patient_data(self, tmp_path: Path, webhook_receiver: Any) -> None:
        """Uncertain slices raise alerts; the webhook bodies name no patient, and carry the token."""
        routes = [{"name": "mr-stream", "model": "brightness", "mode": "instance", "match": {"modality": ["MR"]},
                   "outputs": ["sr", "alert"], "quiet_s": 1.0}]
        config = write_config(tmp_path / "conf", routes=routes, log_level="info", alert_channels=[
            {"kind": "log"}, {"kind": "webhook", "url": webhook_receiver.url, "token": "webhook-secret"}])
        with running_sidecar(config) as app:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", app.port, ae_title="SIDECAR")
            assert assoc.is_established
            for ds in make_mr_series(3, seed=808):
                assert assoc.send_c_store(ds).Status == 0
            assoc.release()
            deadline = time.monotonic() + 20
            while not webhook_receiver.bodies and time.monotonic() < deadline:
                time.sleep(0.05)
        assert webhook_receiver.bodies, "no alert reached the webhook"
        assert webhook_receiver.headers[0].get("Authorization") == "Bearer webhook-secret"
        needles = _needles()
        for body in webhook_receiver.bodies:
            text = body.decode("utf-8")
            assert not [n.pattern for n in needles if n.search(text)], text
