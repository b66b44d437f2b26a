"""End to end with a real Orthanc as the PACS: Orthanc pushes a series, the SR comes back into its study.

Orthanc (Debian package `orthanc`) is started on loopback with a generated config that knows
the sidecar as the modality "sidecar"; the sidecar's only destination is Orthanc's DICOM port.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.orthanc import Orthanc
from tests.helpers.ports import free_port
from tests.helpers.sidecar import running_sidecar, write_config
from tests.helpers.validate import assert_valid_dicom

pytestmark = pytest.mark.e2e

MODALITY = "sidecar"  # the sidecar's name in Orthanc's DicomModalities
RESULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Loop:
    orthanc: Orthanc
    app: Sidecar


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """Orthanc knowing the sidecar as a modality, and a sidecar sending its results to Orthanc."""
    sidecar_port = free_port()
    orthanc = Orthanc(modalities={MODALITY: ("SIDECAR", sidecar_port)})
    cfg = write_config(
        tmp_path_factory.mktemp("e2e") / "conf", port=sidecar_port,
        destinations=[{"kind": "dicom", "name": "orthanc", "host": "127.0.0.1", "port": orthanc.dicom_port,
                       "ae_title": orthanc.ae_title}],
    )
    with orthanc, running_sidecar(cfg) as app:
        yield Loop(orthanc, app)


def _wait_for_result_uid(app: Sidecar, series_uid: str) -> str:
    """The SOP Instance UID of the series' SR, once the worker has queued it for Orthanc."""
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while time.monotonic() < deadline:
        items = app.journal.outbox(series_uid)
        if items:
            assert len(items) == 1, [i.sop_instance_uid for i in items]
            return items[0].sop_instance_uid
        time.sleep(0.05)
    raise TimeoutError(f"no result queued for the series in {RESULT_TIMEOUT_S} s")


class TestOrthancRoundTrip:
    def test_orthanc_echo_to_the_sidecar_succeeds(self, loop: Loop) -> None:
        """Orthanc's C-ECHO to the sidecar (POST /modalities/sidecar/echo) answers success."""
        loop.orthanc.rest("POST", f"/modalities/{MODALITY}/echo", {})  # raises OrthancError on failure

    def test_series_pushed_from_orthanc_comes_back_as_valid_sr_in_the_same_study(
        self, loop: Loop, tmp_path: Path,
    ) -> None:
        """An MR series pushed by Orthanc returns to Orthanc as one valid SR in the same study."""
        orthanc, app = loop.orthanc, loop.app
        uploaded, source_uids = [], set()
        for ds in make_mr_series(4, seed=81):
            source_uids.add(str(ds.SOPInstanceUID))
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            uploaded.append(orthanc.upload(path))
        series_ids = {u["ParentSeries"] for u in uploaded}
        study_ids = {u["ParentStudy"] for u in uploaded}
        assert len(series_ids) == 1 and len(study_ids) == 1
        (series_id,), (study_id,) = series_ids, study_ids
        source = orthanc.rest("GET", f"/series/{series_id}")
        series_uid = source["MainDicomTags"]["SeriesInstanceUID"]
        study_uid = orthanc.rest("GET", f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]

        orthanc.push_series(MODALITY, series_id)

        sr_uid = _wait_for_result_uid(app, series_uid)
        (sr_id,) = orthanc.wait_for_instance(sr_uid, timeout_s=RESULT_TIMEOUT_S)
        sr_series = orthanc.rest("GET", f"/series/{orthanc.rest('GET', f'/instances/{sr_id}')['ParentSeries']}")
        assert sr_series["ParentStudy"] == study_id, "the SR landed in another study"
        assert sr_series["MainDicomTags"]["Modality"] == "SR"
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in orthanc.rest("GET", f"/studies/{study_id}/series"))
        assert modalities == ["MR", "SR"]

        path = tmp_path / "sr-from-orthanc.dcm"
        path.write_bytes(orthanc.instance_file(sr_id))
        sr = assert_valid_dicom(path)
        assert sr.Modality == "SR"
        assert str(sr.StudyInstanceUID) == study_uid
        assert str(sr.SOPInstanceUID) == sr_uid
        referenced = {str(el.value) for el in sr.iterall() if el.keyword == "ReferencedSOPInstanceUID"}
        assert source_uids <= referenced, "the SR does not reference every pushed image"
        row = app.journal.series(series_uid)
        assert row is not None and row.n_instances == 4 and row.calling_ae == orthanc.ae_title
