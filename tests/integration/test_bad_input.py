"""Bad input against a running sidecar: every case gets a clear status, and the service goes on.

Each case sends something wrong with a real pynetdicom SCU (or a scripted raw-socket peer for
PDU-level garbage and aborts) and checks the named DIMSE status and its ErrorComment. After
every case the service must still answer C-ECHO, accept a good C-STORE, and still hold every
instance it acknowledged before (spool file and journal row): DESIGN.md "Bad input".

Crafted instances are written as DICOM files and sent byte for byte (pynetdicom's chunked
dataset mode), so the SCU never re-encodes or validates what the test means to be broken.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
import yaml
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import MRImageStorage, UltrasoundImageStorage, Verification

from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from tests.helpers.dicom_factory import fake_uid, make_mr, make_us
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [
    pytest.mark.integration,
    # The in-process sidecar decodes the crafted datasets; pydicom warns about the UIDs we broke.
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length:UserWarning"),
]

HOST = "127.0.0.1"
SCU_AE = "BADINPUT"
RAW_AE = "RAWPEER"
MAX_INSTANCE_BYTES = 64 * 1024  # a 64x64 MR slice is ~9 KB; a 256x256 one ~130 KB
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1.1"  # not a storage class pynetdicom knows
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"  # a transfer syntax the sidecar does not offer
RAW_TIMEOUT_S = 10.0


# -- a running sidecar and what it has acknowledged ---------------------------------------------


@dataclass
class Service:
    """A running sidecar plus the instances it acknowledged, for checks after every case."""

    app: Sidecar
    root: Path
    acknowledged: dict[str, Path] = field(default_factory=dict)
    _next_seed: int = 1000

    @property
    def spool(self) -> Path:
        return self.app.spool.root

    def associate(self, contexts: list[tuple[str, list[str]]], ae_title: str = SCU_AE,
                  called: str = "SIDECAR") -> Association:
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        return ae.associate(HOST, self.app.port, ae_title=called)

    @contextmanager
    def mr_association(self, *syntaxes: str) -> Iterator[Association]:
        """An association offering MR Image Storage in `syntaxes` (default Explicit VR LE)."""
        contexts = [(MRImageStorage, [ts]) for ts in (syntaxes or (ExplicitVRLittleEndian,))]
        contexts.append((Verification, [ExplicitVRLittleEndian]))
        assoc = self.associate(contexts)
        assert assoc.is_established, "the sidecar refused a plain MR association"
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def store_good(self) -> str:
        """C-STORE a valid new MR slice; it must succeed and be journalled and spooled."""
        self._next_seed += 1
        ds = make_mr(seed=self._next_seed)
        with self.mr_association() as assoc:
            status = assoc.send_c_store(ds)
        assert status.Status == StoreStatus.SUCCESS, f"good instance refused: {status}"
        uid = str(ds.SOPInstanceUID)
        stored = self.app.journal.instance(uid)
        assert stored is not None, "a good instance was acknowledged but not journalled"
        self.acknowledged[uid] = Path(stored.path)
        return uid

    def assert_still_serving(self) -> None:
        """C-ECHO and a good C-STORE succeed; nothing acknowledged before has been lost."""
        assoc = self.associate([(Verification, [ExplicitVRLittleEndian])])
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
        self.store_good()
        self.assert_nothing_lost()

    def assert_nothing_lost(self) -> None:
        for uid, path in self.acknowledged.items():
            assert self.app.journal.has_instance(uid), f"acknowledged instance {uid} left the journal"
            assert path.is_file(), f"acknowledged instance {uid} left the spool"
            assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) == uid

    def spooled_files(self) -> set[Path]:
        return {p for p in self.spool.rglob("*") if p.is_file()}


def _config_for(folder: Path, **limits: int) -> Path:
    return write_config(
        folder, routes=[],
        limits={"max_instance_bytes": MAX_INSTANCE_BYTES, "min_free_disk_bytes": 0, **limits},
        access={"calling_ae_titles": [SCU_AE, RAW_AE]},
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("bad-input")
    with running_sidecar(_config_for(root / "conf")) as app:
        svc = Service(app, root)
        svc.store_good()  # something acknowledged before the first bad case
        yield svc


# -- crafting broken instances ------------------------------------------------------------------


@contextmanager
def _lenient_pydicom() -> Iterator[None]:
    """Let pydicom hold and write values the test means to be invalid."""
    settings = pydicom.config.settings
    saved = settings.writing_validation_mode, settings.reading_validation_mode
    settings.writing_validation_mode = settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.writing_validation_mode, settings.reading_validation_mode = saved


def _file_bytes(ds: Dataset) -> bytes:
    """Preamble, file meta (as given) and the dataset in Explicit VR LE, with no checks."""
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _send_bytes(assoc: Association, data: bytes, folder: Path) -> Dataset:
    """C-STORE a file's bytes as they are: SOP Class/Instance and syntax come from its file meta."""
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".dcm", delete=False) as fh:
        fh.write(data)
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(Path(fh.name))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        os.unlink(fh.name)


def _crafted(seed: int, change: Callable[[Dataset], None]) -> bytes:
    """A valid MR slice (file meta keeps its valid UIDs) with `change` applied to the dataset."""
    ds = make_mr(seed=seed)
    with _lenient_pydicom():
        change(ds)
        return _file_bytes(ds)


def _assert_refused(status: Dataset, expected: StoreStatus, *words: str) -> str:
    assert "Status" in status, "no C-STORE response (the association was lost)"
    assert status.Status == expected, (
        f"expected {expected.name}, got 0x{int(status.Status):04X}: {status.get('ErrorComment')}")
    comment = str(status.get("ErrorComment", ""))
    assert comment, f"{expected.name} without an ErrorComment"
    for word in words:
        assert word.lower() in comment.lower(), f"ErrorComment {comment!r} does not mention {word!r}"
    return comment


# -- refused instances ------------------------------------------------------------------------


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)
    return change


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds, keyword, value)
    return change


class TestRefusedHeaders:
    """Instances whose identifying attributes are missing or wrong are 'cannot understand'."""

    @pytest.mark.parametrize(("change", "words"), [
        pytest.param(_delete("SOPInstanceUID"), ("SOPInstanceUID", "missing"), id="missing-sop-instance-uid"),
        pytest.param(_set("StudyInstanceUID", ""), ("StudyInstanceUID", "empty"), id="empty-study-uid"),
        pytest.param(_delete("SeriesInstanceUID"), ("SeriesInstanceUID", "missing"), id="missing-series-uid"),
        pytest.param(_set("SeriesInstanceUID", "1.2.abc.4"), ("SeriesInstanceUID", "not a valid UID"),
                     id="letters-in-uid"),
        pytest.param(_set("StudyInstanceUID", "1.02.3"), ("StudyInstanceUID", "not a valid UID"),
                     id="leading-zero-in-uid"),
        pytest.param(_set("SeriesInstanceUID", "1." + "2" * 70), ("SeriesInstanceUID", "not a valid UID"),
                     id="uid-over-64-chars"),
        pytest.param(_delete("Modality"), ("Modality",), id="missing-modality"),
        pytest.param(_set("Modality", ""), ("Modality",), id="empty-modality"),
    ])
    def test_missing_or_invalid_identifier_is_cannot_understand(
        self, service: Service, change: Callable[[Dataset], None], words: tuple[str, ...],
    ) -> None:
        """A missing, empty or malformed UID or Modality is refused with C000 naming the attribute."""
        before = service.spooled_files()
        with service.mr_association() as assoc:
            status = _send_bytes(assoc, _crafted(11, change), service.root)
        _assert_refused(status, StoreStatus.CANNOT_UNDERSTAND, *words)
        assert service.spooled_files() == before
        service.assert_still_serving()

    @pytest.mark.parametrize(("keyword", "value"), [
        pytest.param("SeriesInstanceUID", "1.2.3/../../../etc", id="series-dotdot"),
        pytest.param("StudyInstanceUID", "../../../../../../tmp/escaped", id="study-dotdot"),
        pytest.param("StudyInstanceUID", "/etc", id="study-absolute"),
        pytest.param("SOPInstanceUID", "1.2.3/../../../../escaped", id="sop-dotdot"),
    ])
    def test_uid_crafted_to_escape_the_spool_is_refused_and_writes_nothing(
        self, service: Service, keyword: str, value: str,
    ) -> None:
        """A UID with '/' or '..' is refused (C000) and no file appears anywhere outside the spool."""
        sop_uid = fake_uid("escape", keyword)
        before = service.spooled_files()
        outside_before = {p for p in service.root.rglob("*") if p.is_file()}

        def change(ds: Dataset) -> None:
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            setattr(ds, keyword, value)

        with service.mr_association() as assoc:
            status = _send_bytes(assoc, _crafted(12, change), service.root)
        expected = ("SOPInstanceUID",) if keyword == "SOPInstanceUID" else (keyword,)
        _assert_refused(status, StoreStatus.CANNOT_UNDERSTAND, *expected, "not a valid UID")
        assert service.spooled_files() == before
        assert {p for p in service.root.rglob("*") if p.is_file()} == outside_before
        for name in (f"{sop_uid}.dcm", "escaped"):
            assert not list(Path(tempfile.gettempdir()).glob(name))
            assert not (Path("/etc") / name).exists()
        service.assert_still_serving()

    def test_sop_instance_uid_differing_from_the_request_is_cannot_understand(self, service: Service) -> None:
        """A dataset whose SOPInstanceUID is not the C-STORE's Affected SOP Instance UID is refused."""
        data = _crafted(13, _set("SOPInstanceUID", fake_uid("other-instance")))
        with service.mr_association() as assoc:
            status = _send_bytes(assoc, data, service.root)
        _assert_refused(status, StoreStatus.CANNOT_UNDERSTAND, "SOPInstanceUID differs")
        service.assert_still_serving()

    def test_sop_class_differing_from_the_context_is_refused_naming_both(self, service: Service) -> None:
        """A dataset of another SOP Class than its presentation context's abstract syntax: A900, both named."""
        data = _crafted(14, _set("SOPClassUID", UltrasoundImageStorage))
        with service.mr_association() as assoc:
            status = _send_bytes(assoc, data, service.root)
        _assert_refused(status, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Ultrasound Image Storage",
                        "MR Image Storage")
        service.assert_still_serving()


class TestRefusedPixelsAndSizes:
    """Pixel data that does not fit its header, absurd dimensions, and instances over the limit."""

    def test_pixel_data_shorter_than_its_header_is_cannot_understand(self, service: Service) -> None:
        """PixelData of half the bytes Rows x Columns x BitsAllocated needs is refused with C000."""
        ds = make_mr(seed=21)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        with service.mr_association() as assoc:
            status = assoc.send_c_store(ds)
        _assert_refused(status, StoreStatus.CANNOT_UNDERSTAND, "pixel data", "header needs")
        assert not service.app.journal.has_instance(str(ds.SOPInstanceUID))
        service.assert_still_serving()

    @pytest.mark.parametrize("keep", [
        pytest.param(lambda n: n - 1000, id="cut-inside-pixel-data"),
        pytest.param(lambda n: n // 2, id="cut-in-half"),
        pytest.param(lambda n: 700, id="cut-inside-the-header"),
    ])
    def test_truncated_file_is_cannot_understand(self, service: Service, keep: Callable[[int], int]) -> None:
        """A file cut short and sent byte for byte is refused with C000, never kept."""
        ds = make_mr(seed=22)
        data = _file_bytes(ds)
        with service.mr_association() as assoc:
            status = _send_bytes(assoc, data[: keep(len(data))], service.root)
        _assert_refused(status, StoreStatus.CANNOT_UNDERSTAND)
        assert not service.app.journal.has_instance(str(ds.SOPInstanceUID))
        service.assert_still_serving()

    @pytest.mark.parametrize(("rows", "columns", "frames"), [
        pytest.param(65535, 65535, 1, id="65535x65535"),
        pytest.param(64, 64, 2_000_000_000, id="two-billion-frames"),
        pytest.param(65535, 65535, 99_999_999, id="both"),
    ])
    def test_absurd_dimensions_are_refused(self, service: Service, rows: int, columns: int, frames: int) -> None:
        """Rows x Columns x Frames beyond any real image is refused before its pixels are read."""
        def change(ds: Dataset) -> None:
            ds.Rows, ds.Columns = rows, columns
            if frames > 1:
                ds.NumberOfFrames = frames

        with service.mr_association() as assoc:
            status = _send_bytes(assoc, _crafted(23, change), service.root)
        _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES, "dimensions too large")
        service.assert_still_serving()

    def test_instance_over_the_configured_size_limit_is_refused(self, service: Service) -> None:
        """An instance larger than limits.max_instance_bytes is refused, naming its size and the limit."""
        ds = make_mr(seed=24, size=256)
        with service.mr_association() as assoc:
            status = assoc.send_c_store(ds)
        _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES, "exceeds the limit", str(MAX_INSTANCE_BYTES))
        assert not service.app.journal.has_instance(str(ds.SOPInstanceUID))
        service.assert_still_serving()


class TestNegotiation:
    """What association negotiation refuses: unknown SOP classes, syntaxes, callers."""

    def test_unknown_private_sop_class_context_is_rejected(self, service: Service) -> None:
        """A private SOP class is rejected at negotiation ('abstract syntax not supported'); nothing can be sent."""
        assoc = service.associate([(PRIVATE_SOP_CLASS, [ExplicitVRLittleEndian]),
                                   (Verification, [ExplicitVRLittleEndian])])
        assert assoc.is_established
        try:
            rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
            assert rejected == {PRIVATE_SOP_CLASS: 0x03}  # PS3.8 9.3.3.2: abstract syntax not supported
            ds = make_mr(seed=31)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(PRIVATE_SOP_CLASS)
            with pytest.raises(ValueError, match="presentation context"):
                assoc.send_c_store(ds)
        finally:
            assoc.release()
        service.assert_still_serving()

    def test_unsupported_transfer_syntax_context_is_rejected(self, service: Service) -> None:
        """MR offered only in a syntax the sidecar does not decode is rejected ('transfer syntaxes not supported')."""
        assoc = service.associate([(MRImageStorage, [HTJ2K_LOSSLESS]), (Verification, [ExplicitVRLittleEndian])])
        assert assoc.is_established
        try:
            rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
            assert rejected == {MRImageStorage: 0x04}  # PS3.8 9.3.3.2: transfer syntaxes not supported
        finally:
            assoc.release()
        service.assert_still_serving()

    @pytest.mark.parametrize(("calling", "called"), [
        pytest.param("INTRUDER", "SIDECAR", id="calling-ae-not-allowed"),
        pytest.param(SCU_AE, "NOT-SIDECAR", id="wrong-called-ae"),
    ])
    def test_association_outside_the_access_rules_is_rejected(
        self, service: Service, calling: str, called: str,
    ) -> None:
        """A calling AE off the allow-list, or a wrong called AE title, gets A-ASSOCIATE-RJ."""
        assoc = service.associate([(MRImageStorage, [ExplicitVRLittleEndian])], ae_title=calling, called=called)
        assert assoc.is_rejected
        assert not assoc.is_established
        service.assert_still_serving()


class TestCompressedSyntaxes:
    """Compressed pixel data is accepted, kept byte for byte, and decodes back."""

    @pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
    def test_lossless_compressed_mr_is_stored_and_decodes_to_the_original(
        self, service: Service, syntax: UID,
    ) -> None:
        """RLE, JPEG-LS and JPEG 2000 lossless MR slices get Success and decode to the sent pixels."""
        ds = make_mr(seed=41, sop_uid=fake_uid("compressed", syntax))
        original = ds.pixel_array.copy()
        ds.compress(syntax)
        with service.mr_association(syntax) as assoc:
            status = assoc.send_c_store(ds)
        assert status.Status == StoreStatus.SUCCESS
        stored = service.app.journal.instance(str(ds.SOPInstanceUID))
        assert stored is not None
        back = pydicom.dcmread(stored.path)
        assert back.file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(back.pixel_array, original)
        service.acknowledged[str(ds.SOPInstanceUID)] = Path(stored.path)
        service.assert_still_serving()

    def test_jpeg_baseline_is_stored_and_decodes(self, service: Service) -> None:
        """An 8-bit JPEG baseline image gets Success, is kept as sent, and decodes to its size."""
        ds = make_us(seed=42)
        grey = ds.pixel_array.mean(axis=2).astype(np.uint8)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        del ds.PlanarConfiguration
        buf = io.BytesIO()
        Image.fromarray(grey, mode="L").save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        assoc = service.associate([(UltrasoundImageStorage, [JPEGBaseline8Bit])])
        assert assoc.is_established
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == StoreStatus.SUCCESS
        stored = service.app.journal.instance(str(ds.SOPInstanceUID))
        assert stored is not None
        back = pydicom.dcmread(stored.path)
        assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert back.pixel_array.shape == grey.shape
        assert np.abs(back.pixel_array.astype(int) - grey.astype(int)).mean() < 4  # lossy, but close
        service.acknowledged[str(ds.SOPInstanceUID)] = Path(stored.path)
        service.assert_still_serving()


# -- a full disk ------------------------------------------------------------------------------


@contextmanager
def _service_on(config: Path, root: Path) -> Iterator[Service]:
    with running_sidecar(config) as app:
        yield Service(app, root)


def _tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (unmounted afterwards); skipped where mounting is not permitted."""
    yield from _tmpfs(tmp_path / "small", "size=1m,mode=0700")


@pytest.fixture
def few_inodes_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for bytes but only 32 inodes (unmounted afterwards)."""
    yield from _tmpfs(tmp_path / "inodes", "size=4m,nr_inodes=32,mode=0700")


def _spool_on(folder: Path, data_dir: Path, **limits: int) -> Path:
    """A config whose spool lives on `data_dir` and whose journal does not."""
    cfg = _config_for(folder, **limits)
    svc = yaml.safe_load((cfg / "sidecar.yaml").read_text())
    svc["data_dir"] = str(data_dir)
    svc["journal_url"] = f"sqlite:///{folder / 'journal.sqlite'}"
    (cfg / "sidecar.yaml").write_text(yaml.safe_dump(svc))
    return cfg


class TestFullDisk:
    """A spool that cannot take an instance answers 'out of resources' (A700) and keeps serving."""

    def test_spool_below_its_free_space_watermark_is_out_of_resources(self, tmp_path: Path) -> None:
        """With limits.min_free_disk_bytes above the free space, C-STORE gets A700; C-ECHO still works."""
        cfg = _config_for(tmp_path / "conf", min_free_disk_bytes=1 << 62)
        with _service_on(cfg, tmp_path) as svc:
            ds = make_mr(seed=51)
            with svc.mr_association() as assoc:
                status = assoc.send_c_store(ds)
                assert assoc.send_c_echo().Status == 0x0000
            _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES, "watermark")
            assert not svc.app.journal.has_instance(str(ds.SOPInstanceUID))
            assert svc.spooled_files() == set()

    def test_full_small_filesystem_is_out_of_resources_until_space_is_freed(
        self, tmp_path: Path, small_tmpfs: Path,
    ) -> None:
        """On a full 1 MiB tmpfs a store gets A700; acknowledged files stay; after freeing space stores succeed."""
        cfg = _spool_on(tmp_path / "conf", small_tmpfs / "var")
        with _service_on(cfg, tmp_path) as svc:
            svc.store_good()
            filler = small_tmpfs / "filler"
            free = shutil.disk_usage(small_tmpfs).free
            filler.write_bytes(b"\x00" * (free - 8 * 1024))
            ds = make_mr(seed=52, size=128)  # ~33 KB: more than is left
            with svc.mr_association() as assoc:
                status = assoc.send_c_store(ds)
            _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES)
            assert not svc.app.journal.has_instance(str(ds.SOPInstanceUID))
            assert not list(svc.spool.rglob(".incoming-*"))
            svc.assert_nothing_lost()
            filler.unlink()
            svc.assert_still_serving()

    def test_filesystem_out_of_inodes_is_out_of_resources_until_freed(
        self, tmp_path: Path, few_inodes_tmpfs: Path,
    ) -> None:
        """When the OS itself says ENOSPC (no inodes left), the store gets A700 naming it, then recovers."""
        cfg = _spool_on(tmp_path / "conf", few_inodes_tmpfs / "var")
        with _service_on(cfg, tmp_path) as svc:
            svc.store_good()
            fillers = []
            for i in range(64):
                try:
                    (few_inodes_tmpfs / f"filler-{i}").touch()
                except OSError:
                    break
                fillers.append(few_inodes_tmpfs / f"filler-{i}")
            else:
                pytest.fail("the tmpfs never ran out of inodes")
            ds = make_mr(seed=53)
            with svc.mr_association() as assoc:
                status = assoc.send_c_store(ds)
            _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES, "No space left on device")
            assert not svc.app.journal.has_instance(str(ds.SOPInstanceUID))
            svc.assert_nothing_lost()
            for f in fillers:
                f.unlink()
            svc.assert_still_serving()


# -- misbehaving peers on the raw socket ----------------------------------------------------------


def _item(item_type: int, data: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(data)) + data


def _associate_rq(abstract: str, syntax: str, calling: str = RAW_AE, called: str = "SIDECAR") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing one presentation context, id 1."""
    context = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, abstract.encode()) + _item(0x40, syntax.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999.9"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def _p_data(context_id: int, flags: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (flags: bit 0 command, bit 1 last fragment)."""
    pdv = struct.pack(">IBB", len(data) + 2, context_id, flags) + data
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


A_ABORT = struct.pack(">BxIBBBB", 0x07, 4, 0, 0, 0, 0)


def _store_command(sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_instance
    cmd.CommandGroupLength = 0
    cmd.CommandGroupLength = len(encode(cmd, True, True)) - 12  # group length counts what follows it
    return bytes(encode(cmd, True, True))


def _read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """One PDU (type, body), or None when the peer closed the connection."""
    head = _recv_exactly(sock, 6)
    if head is None:
        return None
    pdu_type, length = struct.unpack(">BxI", head)
    body = _recv_exactly(sock, length)
    return None if body is None else (pdu_type, body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def _raw_peer(service: Service) -> socket.socket:
    sock = socket.create_connection((HOST, service.app.port), timeout=RAW_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _answer_to_garbage(sock: socket.socket) -> int | None:
    """The sidecar's first PDU type after garbage, or None when it just closed the connection.

    PS3.8 9.2 (AA-1): an unrecognised PDU is answered with an A-ABORT, after which the acceptor
    waits for the peer to close the transport (the test closes it at once).
    """
    pdu = _read_pdu(sock)
    return None if pdu is None else pdu[0]


class TestMisbehavingPeers:
    """Garbage and aborts on the socket never hurt the service or what it acknowledged."""

    @pytest.mark.parametrize(("garbage", "aborts"), [
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", True, id="http-request"),
        pytest.param(b"\x09\x00\x00\x00\x00\x10" + bytes(16), True, id="unknown-pdu-type"),
        pytest.param(np.random.default_rng(7).bytes(4096), False, id="random-bytes"),
    ])
    def test_garbage_bytes_do_not_stop_the_service(self, service: Service, garbage: bytes, aborts: bool) -> None:
        """Bytes that are not an upper layer PDU get an A-ABORT (or a wait) and other peers are served meanwhile."""
        with _raw_peer(service) as sock:
            sock.sendall(garbage)
            sock.settimeout(2.0)
            try:
                answer: int | str | None = _answer_to_garbage(sock)
            except TimeoutError:
                answer = "still reading"  # e.g. a random byte that looks like a PDU type with a huge length
            if aborts:
                assert answer == 0x07, f"expected an A-ABORT PDU, got {answer}"
            else:
                assert answer in (0x07, None, "still reading")
            service.assert_still_serving()  # while the garbage connection is still open

    def test_pdu_announcing_gigabytes_then_closing_is_survived(self, service: Service) -> None:
        """A PDU header claiming a 4 GiB body, followed by a close, leaves the service serving."""
        with _raw_peer(service) as sock:
            sock.sendall(struct.pack(">BxI", 0x04, 0xFFFFFFF0) + bytes(1024))
        service.assert_still_serving()

    def test_associate_request_then_close_is_survived(self, service: Service) -> None:
        """An A-ASSOCIATE-RQ that is accepted and then simply closed leaves the service serving."""
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu}"
        service.assert_still_serving()

    @pytest.mark.parametrize("ending", ["close", "a-abort"])
    def test_abort_mid_transfer_keeps_nothing_and_the_service_keeps_serving(
        self, service: Service, ending: str,
    ) -> None:
        """Half an instance then a close or an A-ABORT: nothing is spooled or journalled for it."""
        ds = make_mr(seed=61)
        uid = str(ds.SOPInstanceUID)
        data = bytes(encode(ds, False, True))
        before = service.spooled_files()
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu}"
            sock.sendall(_p_data(1, 0x03, _store_command(MRImageStorage, uid)))
            sock.sendall(_p_data(1, 0x00, data[: len(data) // 2]))  # not the last fragment
            if ending == "a-abort":
                sock.sendall(A_ABORT)
                assert _read_pdu(sock) is None, "the sidecar answered an A-ABORT"
        service.assert_still_serving()
        assert not service.app.journal.has_instance(uid)
        assert not [p for p in service.spooled_files() - before if uid in p.name]
        assert not list(service.spool.rglob(".incoming-*"))

    def test_complete_raw_store_succeeds(self, service: Service) -> None:
        """The scripted peer is sound: the same PDUs, sent whole, store an instance with Success."""
        ds = make_mr(seed=62)
        uid = str(ds.SOPInstanceUID)
        data = bytes(encode(ds, False, True))
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02
            sock.sendall(_p_data(1, 0x03, _store_command(MRImageStorage, uid)))
            sock.sendall(_p_data(1, 0x02, data))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x04, f"expected the C-STORE-RSP, got {pdu}"
            sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))  # A-RELEASE-RQ
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x06
        stored = service.app.journal.instance(uid)
        assert stored is not None
        service.acknowledged[uid] = Path(stored.path)
        service.assert_still_serving()
