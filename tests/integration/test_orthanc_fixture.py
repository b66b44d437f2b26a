"""The Orthanc fixture: starts on loopback, takes uploads, answers DICOM, pushes to a modality."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from sidecar.dicom.status import StoreStatus
from sidecar.egress.transport import DicomTransport
from sidecar.settings import DicomDestination
from tests.helpers.dicom_factory import make_mr
from tests.helpers.orthanc import Orthanc
from tests.helpers.ports import free_port

pytestmark = pytest.mark.integration

SIDECAR_AET = "SIDECAR"


def uid(*parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, ("orthanc-test", *parts))).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def write_mr(path: Path, series: str, index: int) -> Dataset:
    """A small MR image (32x32, 16-bit, seeded pixels) in Explicit VR Little Endian."""
    ds = make_mr(seed=index, study_uid=uid("study", series), series_uid=uid("series", series),
                 sop_uid=uid(series, index), instance_number=index + 1, size=32)
    ds.save_as(path, enforce_file_format=True)
    return ds


class SidecarStandIn:
    """A pynetdicom storage SCP playing the sidecar, so Orthanc has a modality to push to."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Dataset] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=SIDECAR_AET)
        ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(event.dataset)
        return StoreStatus.SUCCESS

    def shutdown(self) -> None:
        assert self._server is not None  # block=False returns the server
        self._server.shutdown()


@pytest.fixture(scope="module")
def sidecar() -> Iterator[SidecarStandIn]:
    s = SidecarStandIn()
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def orthanc(sidecar: SidecarStandIn) -> Iterator[Orthanc]:
    with Orthanc(modalities={"sidecar": (SIDECAR_AET, sidecar.port)}) as o:
        yield o


class TestOrthancFixture:
    def test_starts_on_loopback_and_reports_its_version(self, orthanc: Orthanc) -> None:
        """/system answers with the configured AE title and ports."""
        system = orthanc.rest("GET", "/system")
        assert system["DicomAet"] == "ORTHANC"
        assert system["DicomPort"] == orthanc.dicom_port
        assert system["HttpPort"] == orthanc.http_port
        assert orthanc.rest("GET", "/modalities") == ["sidecar"]

    def test_accepts_an_upload(self, orthanc: Orthanc, tmp_path: Path) -> None:
        """POST /instances stores the file; it is listed and found by SOP Instance UID."""
        path = tmp_path / "upload.dcm"
        ds = write_mr(path, "upload", 0)
        answer = orthanc.upload(path)
        assert answer["Status"] in {"Success", "AlreadyStored"}
        assert answer["ID"] in orthanc.instances()
        assert orthanc.find_instances(ds.SOPInstanceUID) == [answer["ID"]]

    def test_answers_c_echo_on_its_dicom_port(self, orthanc: Orthanc) -> None:
        """A pynetdicom C-ECHO to Orthanc succeeds."""
        ae = AE(ae_title=SIDECAR_AET)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="ORTHANC")
        assert assoc.is_established
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        assert status.Status == 0x0000

    def test_dicom_transport_stores_into_orthanc(self, orthanc: Orthanc, tmp_path: Path) -> None:
        """DicomTransport C-STOREs a file; Orthanc has it, pixel data intact."""
        path = tmp_path / "result.dcm"
        ds = write_mr(path, "transport", 0)
        dest = DicomDestination(name="pacs", host="127.0.0.1", port=orthanc.dicom_port, ae_title="ORTHANC",
                                timeout_s=10)
        transport = DicomTransport(dest, calling_ae=SIDECAR_AET)
        transport.echo()
        (out,) = transport.send([str(path)])
        assert out.ok, out.error
        (found,) = orthanc.wait_for_instance(ds.SOPInstanceUID, timeout_s=5.0)
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(orthanc.instance_file(found))
        assert dcmread(stored).PixelData == ds.PixelData

    def test_pushes_a_series_to_the_configured_modality(
        self, orthanc: Orthanc, sidecar: SidecarStandIn, tmp_path: Path
    ) -> None:
        """POST /modalities/sidecar/store sends every instance of the series to the sidecar."""
        uids = []
        for i in range(2):
            path = tmp_path / f"push{i}.dcm"
            uids.append(write_mr(path, "push", i).SOPInstanceUID)
            answer = orthanc.upload(path)
        orthanc.push_series("sidecar", answer["ParentSeries"])
        assert sorted(uids) == sorted(ds.SOPInstanceUID for ds in sidecar.received)
