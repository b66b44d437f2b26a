"""Bad input at negotiation (unknown SOP classes, syntaxes, callers) and compressed syntaxes kept intact.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.sop_class import MRImageStorage, UltrasoundImageStorage, Verification

from sidecar.dicom.status import StoreStatus
from tests.helpers.bad_input import (
    BAD_INPUT_MARKS,
    HTJ2K_LOSSLESS,
    PRIVATE_SOP_CLASS,
    SCU_AE,
    Service,
    module_service,
)
from tests.helpers.dicom_factory import fake_uid, make_mr, make_us

pytestmark = BAD_INPUT_MARKS


service = module_service("bad-input-negotiation")


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


