"""The ultrasound front end (models/us) on real vendor objects from pydicom-data and on phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from models.us.decode import UsDecodeError, decode_frame, n_frames
from models.us.frontend import (
    FrontEndConfig,
    letterbox,
    sample_frames,
    square_opening,
    still_channels,
    uniform_indices,
)
from models.us.headers import doppler_from_header
from models.us.predicates import explain_cine, explain_doppler, has_doppler, is_cine
from models.us.regions import COLOR_FLOW, parse_regions
from train.phantoms.joint_us import JointCase, case_dataset

DATA = Path(pydicom.__file__).resolve().parents[1] / "data_store" / "data"
PYDICOM_FILES = Path(pydicom.__file__).resolve().parent / "data" / "test_files"


def _file(name: str) -> Path:
    for folder in (DATA, PYDICOM_FILES):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"pydicom-data file {name} is not installed")


# name -> (region crop expected, colour flow present)
VENDOR_FILES = {
    "US1_UNCR.dcm": (False, True),  # GE power Doppler, RGB, no region calibration
    "US1_J2KR.dcm": (False, True),  # its JPEG 2000 lossless twin (YBR_RCT)
    "US1_J2KI.dcm": (False, True),  # and the lossy JPEG 2000 one (YBR_ICT)
    "OBXXXX1A.dcm": (True, False),  # Philips palette colour with regions, no flow
    "OBXXXX1A_rle_2frame.dcm": (True, False),  # the same, RLE multi-frame
    "color3d_jpeg_baseline.dcm": (True, False),  # SonoSite 120-frame YBR_FULL_422 JPEG cine
    "gdcm-US-ALOKA-16.dcm": (True, False),  # Aloka 16-bit palette, dual view, grey bar region
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (True, False),  # Philips JPEG lossless MONOCHROME2
    "color-pl.dcm": (False, True),  # colour flow (red/blue) without regions, planar RGB
}


class TestVendorFiles:
    @pytest.mark.parametrize("name", sorted(VENDOR_FILES))
    def test_each_file_decodes_to_rgb_uint8(self, name: str) -> None:
        """Every vendor object decodes, frame by frame, to (rows, cols, 3) uint8."""
        ds = pydicom.dcmread(_file(name))
        rgb = decode_frame(ds, n_frames(ds) - 1)
        assert rgb.dtype == np.uint8 and rgb.shape == (ds.Rows, ds.Columns, 3)

    @pytest.mark.parametrize("name", sorted(VENDOR_FILES))
    def test_crop_follows_region_calibration_or_sector(self, name: str) -> None:
        """With regions the crop is the tissue region; without, a sector smaller than the frame."""
        ds = pydicom.dcmread(_file(name))
        fc = still_channels(ds)
        layout, by_region = fc.layout, VENDOR_FILES[name][0]
        assert layout.source == ("region" if by_region else "sector")
        if by_region:
            main = max((r for r in parse_regions(ds) if r.data_type == 1), key=lambda r: r.area)
            assert (layout.x0, layout.y0, layout.x1, layout.y1) == (main.x0, main.y0, main.x1, main.y1)
            assert layout.mm_per_px is not None and 0.05 < layout.mm_per_px[0] < 1.0
        else:
            assert (layout.y1 - layout.y0 + 1) * (layout.x1 - layout.x0 + 1) <= ds.Rows * ds.Columns
        assert fc.grey.shape == fc.doppler.shape == (128, 128)
        assert fc.grey.min() >= 0.0 and fc.grey.max() <= 1.0 and fc.grey.max() > 0.1

    @pytest.mark.parametrize("name", sorted(VENDOR_FILES))
    def test_doppler_channel_found_only_where_there_is_colour_flow(self, name: str) -> None:
        """Colour flow fills the Doppler channel; grey images (green marks, blue icons) leave it empty."""
        fc = still_channels(pydicom.dcmread(_file(name)))
        if VENDOR_FILES[name][1]:
            assert fc.doppler_fraction > 0.02 and fc.doppler.max() > 0.2
        else:
            assert fc.doppler_fraction == 0.0 and fc.doppler.max() == 0.0

    def test_aloka_grey_bar_inside_the_region_is_masked(self) -> None:
        """The grey-bar region (type 13) overlapping the tissue region is cut out of the mask."""
        layout = still_channels(pydicom.dcmread(_file("gdcm-US-ALOKA-16.dcm"))).layout
        assert not layout.mask.all()
        assert not layout.mask[40 - layout.y0, 40 - layout.x0]

    def test_doppler_aware_sampling_of_a_long_cine_decodes_few_frames(self) -> None:
        """A 120-frame JPEG cine samples 8 frames in time order without decoding them all."""
        ds = pydicom.dcmread(_file("color3d_jpeg_baseline.dcm"))
        frames = sample_frames(ds, 8, "doppler", FrontEndConfig(size=64))
        assert len(frames) == 8 and all(f.grey.shape == (64, 64) for f in frames)


class TestPredicates:
    @pytest.mark.parametrize("name", sorted(VENDOR_FILES))
    def test_header_only_predicates_never_raise(self, name: str) -> None:
        """has_doppler/is_cine work on stop_before_pixels headers; cine iff several frames."""
        ds = pydicom.dcmread(_file(name), stop_before_pixels=True)
        assert isinstance(has_doppler(ds), bool)
        assert is_cine(ds) == (int(ds.get("NumberOfFrames", 1) or 1) > 1)

    def test_palette_colour_flag_without_colour_region_is_not_doppler(self) -> None:
        """Philips sets UltrasoundColorDataPresent on a flow-free palette image: regions decide."""
        ds = pydicom.dcmread(_file("OBXXXX1A.dcm"), stop_before_pixels=True)
        assert ds.UltrasoundColorDataPresent == 1
        assert has_doppler(ds) is False

    def test_image_type_colour_mode_bits_say_doppler(self) -> None:
        """ImageType value 4 with the colour Doppler bit (0x0010) is Doppler without pixels."""
        ds = pydicom.dcmread(_file("color-pl.dcm"), stop_before_pixels=True)
        assert doppler_from_header(ds) == (True, "ImageType modes 0011")

    def test_silent_header_falls_back_to_pixels(self) -> None:
        """GE's power Doppler RGB has no header cue: with pixels it is Doppler, without it is not."""
        assert has_doppler(pydicom.dcmread(_file("US1_UNCR.dcm"))) is True
        assert has_doppler(pydicom.dcmread(_file("US1_UNCR.dcm"), stop_before_pixels=True)) is False

    def test_malformed_headers_never_raise(self) -> None:
        """Garbage NumberOfFrames, regions without bounds and odd ImageType are no evidence."""
        ds = Dataset()
        ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 4, b"many", 0, False, True)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "SMALL PARTS", "zz"]
        item = Dataset()
        item.RegionDataType = COLOR_FLOW
        ds.SequenceOfUltrasoundRegions = [item]
        assert is_cine(ds) is False and has_doppler(ds) is False
        assert explain_doppler(ds)[0][0] == "has_doppler" and explain_cine(ds)[0][1] is False


class TestPhantoms:
    def _case(self, gs: int, pd: int) -> JointCase:
        return JointCase("t", "PH-T1", "MCP2", "R", gs, pd, 0 if gs == 0 else max(gs, pd), (0, 0), 11)

    def test_phantom_power_doppler_is_separated_and_headers_agree(self) -> None:
        """A PD phantom has a colour-flow region, Doppler found; its grey twin has neither."""
        pd = case_dataset(self._case(2, 3), doppler=True, cine=False)
        grey = case_dataset(self._case(2, 3), doppler=False, cine=False)
        assert has_doppler(pd) and not has_doppler(grey)
        assert still_channels(pd).doppler_fraction > 0.005
        assert still_channels(grey).doppler_fraction == 0.0

    def test_green_marker_and_caliper_do_not_reach_the_channels(self) -> None:
        """Annotations inside the region are filled in in grey and never count as Doppler."""
        ds = case_dataset(self._case(0, 0), doppler=True, cine=False)  # no flow at all
        fc = still_channels(ds)
        assert fc.doppler_fraction == 0.0
        assert fc.layout.color_boxes and fc.layout.source == "region"

    def test_doppler_aware_frames_carry_more_flow_than_uniform(self) -> None:
        """Pulsatile flow: the Doppler-aware choice keeps frames with at least as much flow."""
        ds = case_dataset(self._case(2, 2), doppler=True, cine=True)
        dop = sum(f.doppler_fraction for f in sample_frames(ds, 4, "doppler"))
        uni = sum(f.doppler_fraction for f in sample_frames(ds, 4, "uniform"))
        assert dop >= uni > 0.0


class TestHelpers:
    def test_uniform_indices_cover_the_clip_and_repeat_short_ones(self) -> None:
        """Evenly spaced indices span first to last frame; a short clip repeats frames."""
        assert uniform_indices(120, 4) == [0, 40, 79, 119]
        assert uniform_indices(2, 4) == [0, 0, 1, 1]

    def test_letterbox_keeps_aspect_and_centres(self) -> None:
        """A wide image is shrunk to the canvas width and centred vertically."""
        out = letterbox(np.ones((50, 100), np.float32), 64)
        rows = np.flatnonzero(out.max(axis=1) > 0)
        assert out.shape == (64, 64) and len(rows) == 32 and rows[0] == 16

    def test_missing_pixels_are_a_clear_error(self) -> None:
        """A header without PixelData raises UsDecodeError, not a pydicom internals error."""
        with pytest.raises(UsDecodeError):
            decode_frame(pydicom.dcmread(_file("US1_UNCR.dcm"), stop_before_pixels=True))


class TestSquareOpening:
    @pytest.mark.parametrize(("shape", "k", "p"), [((64, 80), 5, 0.6), ((121, 97), 15, 0.7), ((300, 200), 9, 0.5)])
    def test_same_as_scipy_binary_opening_with_a_square(self, shape: tuple[int, int], k: int, p: float) -> None:
        """The separable filters give scipy's square opening exactly, borders included."""
        from scipy import ndimage

        rng = np.random.default_rng(k)
        mask = rng.random(shape) < p
        mask[5:30, 5:50] = True
        expected = ndimage.binary_opening(mask, structure=np.ones((k, k), bool))
        assert np.array_equal(square_opening(mask, k), expected)
        assert expected.any() and not expected.all()  # the case removes some pixels and keeps others
