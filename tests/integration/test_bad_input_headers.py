"""Bad input: refused headers, pixel data that does not fit its header, sizes over the limits.

Each case gets its named DIMSE status and ErrorComment; the service goes on (tests/helpers/bad_input.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.sop_class import UltrasoundImageStorage

from sidecar.dicom.status import StoreStatus
from tests.helpers.bad_input import (
    BAD_INPUT_MARKS,
    MAX_INSTANCE_BYTES,
    Service,
    _assert_refused,
    _crafted,
    _delete,
    _file_bytes,
    _send_bytes,
    _set,
    module_service,
)
from tests.helpers.dicom_factory import fake_uid, make_mr

pytestmark = BAD_INPUT_MARKS


service = module_service("bad-input-headers")


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
            ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
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


