"""DicomTransport and Sender against real peers: dcmtk storescp and scripted pynetdicom SCPs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset

from sidecar.dicom.status import StoreStatus
from sidecar.egress.sender import Sender
from sidecar.egress.transport import DicomTransport
from sidecar.errors import DeliveryError
from sidecar.journal import InstanceRecord, Journal
from sidecar.settings import DicomDestination, Sender as SenderSettings
from tests.helpers.dcmtk import StoreSCP
from tests.helpers.dicom_factory import make_mr
from tests.helpers.ports import free_port

pytestmark = pytest.mark.integration


def uid(*parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, ("sender-test", *parts))).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def write_mr(path: Path, index: int, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A small valid MR image (32x32, 16-bit, seeded pixels) written to `path` in `syntax`."""
    ds = make_mr(seed=index, study_uid=uid("study"), series_uid=uid("series"), sop_uid=uid("sop", index),
                 instance_number=index + 1, size=32)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(path, enforce_file_format=True)
    return ds


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def destination(port: int, ae_title: str = "STORESCP", timeout_s: float = 5.0) -> DicomDestination:
    return DicomDestination(name="pacs", host="127.0.0.1", port=port, ae_title=ae_title, timeout_s=timeout_s)


@pytest.fixture()
def mr_files(tmp_path: Path) -> list[Path]:
    out = tmp_path / "results"
    out.mkdir()
    paths = [out / f"mr{i}.dcm" for i in range(3)]
    for i, p in enumerate(paths):
        write_mr(p, i)
    return paths


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path / "received", ae_title="STORESCP", extra_args=["-v"]) as scp:
        yield scp


class TestDicomTransportToStorescp:
    def test_files_arrive_byte_for_byte_over_one_association(
        self, storescp: StoreSCP, mr_files: list[Path]
    ) -> None:
        """Three files, one association; each received data set equals the sent one byte for byte."""
        transport = DicomTransport(destination(storescp.port), calling_ae="SIDECAR")
        before = storescp.log_text().count("Association Received")  # the start-up C-ECHO
        outcomes = transport.send([str(p) for p in mr_files])
        assert [(o.ok, o.status) for o in outcomes] == [(True, StoreStatus.SUCCESS)] * 3
        received = storescp.wait_for_files(3, timeout=5.0)
        by_uid = {dcmread(p).SOPInstanceUID: p for p in received}
        for sent in mr_files:
            ds = dcmread(sent)
            got = by_uid[ds.SOPInstanceUID]
            assert dcmread(got) == ds
            assert dataset_bytes(got) == dataset_bytes(sent)
        assert storescp.log_text().count("Association Received") == before + 1

    def test_implicit_vr_file_is_delivered(self, storescp: StoreSCP, tmp_path: Path) -> None:
        """A file in Implicit VR Little Endian goes out in a context the peer accepts."""
        path = tmp_path / "implicit.dcm"
        sent = write_mr(path, 7, syntax=ImplicitVRLittleEndian)
        (out,) = DicomTransport(destination(storescp.port), "SIDECAR").send([str(path)])
        assert out.ok, out.error
        (got,) = storescp.wait_for_files(1)
        assert dcmread(got).PixelData == sent.PixelData

    def test_echo_succeeds(self, storescp: StoreSCP) -> None:
        """C-ECHO to a running storescp returns quietly."""
        DicomTransport(destination(storescp.port), "SIDECAR").echo()

    def test_unreadable_file_fails_alone_and_is_not_retryable(
        self, storescp: StoreSCP, mr_files: list[Path], tmp_path: Path
    ) -> None:
        """A truncated file is refused for good; the rest of the batch is delivered."""
        bad = tmp_path / "truncated.dcm"
        bad.write_bytes(mr_files[0].read_bytes()[:200])
        outcomes = DicomTransport(destination(storescp.port), "SIDECAR").send([str(bad), str(mr_files[1])])
        assert not outcomes[0].ok and not outcomes[0].retryable and "truncated.dcm" in outcomes[0].error
        assert outcomes[1].ok
        storescp.wait_for_files(1)


class TestDicomTransportUnreachable:
    def test_closed_port_is_a_retryable_failure(self, mr_files: list[Path]) -> None:
        """Nobody listening: every file is retryable, with no status."""
        transport = DicomTransport(destination(free_port()), "SIDECAR")
        outcomes = transport.send([str(p) for p in mr_files])
        assert all(not o.ok and o.retryable and o.status is None for o in outcomes)
        assert "cannot connect" in outcomes[0].error

    def test_echo_to_closed_port_raises_delivery_error(self) -> None:
        """C-ECHO to nobody raises DeliveryError, nothing else."""
        with pytest.raises(DeliveryError, match="cannot connect"):
            DicomTransport(destination(free_port()), "SIDECAR").echo()


class ScriptedPeers:
    """pynetdicom SCPs on free loopback ports that answer every C-STORE with one status."""

    def __init__(self) -> None:
        self._servers: list[Any] = []

    def start(self, status: int, comment: str = "", *, accept_mr: bool = True) -> int:
        ae = AE(ae_title="SCRIPTED")
        # Without MR Image Storage the peer accepts only Secondary Capture: no context for our files.
        ae.add_supported_context(MRImageStorage if accept_mr else SecondaryCaptureImageStorage,
                                 [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

        def handle(event: evt.Event) -> Dataset:
            rsp = Dataset()
            rsp.Status = status
            if comment:
                rsp.ErrorComment = comment
            return rsp

        port = free_port()
        self._servers.append(
            ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
        )
        return port

    def shutdown(self) -> None:
        for server in self._servers:
            server.shutdown()


@pytest.fixture()
def peers() -> Iterator[ScriptedPeers]:
    p = ScriptedPeers()
    yield p
    p.shutdown()


class TestDicomTransportStatuses:
    def test_out_of_resources_is_retryable(self, peers: ScriptedPeers, mr_files: list[Path]) -> None:
        """0xA700 from the peer: try again later."""
        port = peers.start(StoreStatus.REFUSED_OUT_OF_RESOURCES, "disk full")
        (out,) = DicomTransport(destination(port, "SCRIPTED"), "SIDECAR").send([str(mr_files[0])])
        assert (out.ok, out.retryable, out.status) == (False, True, 0xA700)
        assert "disk full" in out.error

    def test_cannot_understand_is_not_retryable(self, peers: ScriptedPeers, mr_files: list[Path]) -> None:
        """0xC000 from the peer: a dead letter, with the status in the reason."""
        port = peers.start(StoreStatus.CANNOT_UNDERSTAND)
        (out,) = DicomTransport(destination(port, "SCRIPTED"), "SIDECAR").send([str(mr_files[0])])
        assert (out.ok, out.retryable, out.status) == (False, False, 0xC000)
        assert "0xC000" in out.error

    def test_sop_class_the_peer_does_not_accept_is_not_retryable(
        self, peers: ScriptedPeers, mr_files: list[Path]
    ) -> None:
        """No accepted presentation context for the file: refused for good, with the SOP class named."""
        port = peers.start(StoreStatus.SUCCESS, accept_mr=False)
        (out,) = DicomTransport(destination(port, "SCRIPTED"), "SIDECAR").send([str(mr_files[0])])
        assert not out.ok and not out.retryable
        assert "MR Image Storage" in out.error


class TestSenderToStorescp:
    def test_sender_delivers_queued_results_and_marks_them_sent(
        self, storescp: StoreSCP, mr_files: list[Path], tmp_path: Path
    ) -> None:
        """The whole path: outbox -> worker thread -> DicomTransport -> storescp -> sent."""
        journal = Journal(f"sqlite:///{tmp_path / 'journal.sqlite'}")
        series = uid("series")
        journal.record_instance(
            InstanceRecord(
                sop_instance_uid=uid("source"), sop_class_uid=MRImageStorage, series_uid=series,
                study_uid=uid("study"), modality="MR", path=str(mr_files[0]), size=1,
            )
        )
        job = journal.enqueue_job(series_uid=series, instance_uid="", model_id="m", model_version="1",
                                  revision=0, route="r", priority=5)
        assert job is not None
        journal.complete_job(job, [("pacs", uid("sop", i), str(p)) for i, p in enumerate(mr_files)])
        settings = SenderSettings(poll_s=0.05)
        sender = Sender(journal, [destination(storescp.port)], settings, calling_ae="SIDECAR")
        sender.start()
        try:
            assert sender.drain(10.0)
        finally:
            sender.stop()
        assert [it.state for it in journal.outbox()] == ["sent"] * 3
        assert len(storescp.wait_for_files(3)) == 3
        journal.close()
