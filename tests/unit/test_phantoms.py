"""Phantom toolkit (seeded physics pieces) and the DICOM writer (valid objects per modality)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
import pytest

from tests.helpers.validate import assert_valid_dicom
from train.phantoms import dicom_writer as dw, toolkit as tk

SHAPE = (64, 48)


def _all_generators(seed: int) -> dict[str, np.ndarray]:
    """One output of every random toolkit function, from one seed."""
    g = tk.rng(seed)
    echo = 0.2 + 0.8 * tk.random_blob(SHAPE, g)
    return {
        "blob": tk.random_blob(SHAPE, g),
        "ellipse": tk.random_ellipse(SHAPE, g),
        "rayleigh": tk.rayleigh_speckle(echo, g),
        "nakagami": tk.nakagami_speckle(echo, g, m=0.7),
        "correlated": tk.correlated_speckle(echo, g),
        "rician": tk.rician_noise(echo, g, sigma=0.05),
        "gaussian": tk.gaussian_noise(echo, g, sigma=0.05),
        "bias": tk.bias_field(SHAPE, g),
        "elastic": tk.elastic_deform(echo, g),
        "quantum": tk.quantum_noise(np.full(SHAPE, 0.5), g),
    }


class TestToolkit:
    def test_same_seed_same_images_different_seed_different_images(self) -> None:
        """Every random piece is a pure function of its generator's seed."""
        a, b, c = _all_generators(7), _all_generators(7), _all_generators(8)
        for name in a:
            assert a[name].shape == SHAPE, name
            assert np.array_equal(a[name], b[name]), name
            assert not np.array_equal(a[name], c[name]), name

    def test_rayleigh_and_nakagami_keep_the_echogenicity_as_mean_square(self) -> None:
        """E[A^2] equals the local echogenicity for Rayleigh and for Nakagami-m speckle."""
        g = tk.rng(0)
        level = np.full((256, 256), 0.5)
        assert np.mean(tk.rayleigh_speckle(level, g) ** 2) == pytest.approx(0.5, rel=0.02)
        assert np.mean(tk.nakagami_speckle(level, g, m=2.0) ** 2) == pytest.approx(0.5, rel=0.02)
        with pytest.raises(ValueError, match="m must be"):
            tk.nakagami_speckle(level, g, m=0.2)

    def test_log_compression_maps_to_unit_range(self) -> None:
        """B-mode output lies in [0, 1] with the brightest echo at 1."""
        bmode = tk.log_compress(tk.correlated_speckle(np.ones(SHAPE), tk.rng(1)))
        assert bmode.min() >= 0.0 and bmode.max() == 1.0

    def test_rician_noise_is_non_negative_and_bias_field_is_bounded(self) -> None:
        """Magnitude noise never goes negative; the bias field stays within exp(+-strength)."""
        g = tk.rng(2)
        assert tk.rician_noise(np.zeros(SHAPE), g, sigma=1.0).min() >= 0.0
        field = tk.bias_field(SHAPE, g, strength=0.3)
        assert np.exp(-0.3) - 1e-9 <= field.min() and field.max() <= np.exp(0.3) + 1e-9

    def test_attenuation_and_photometric_inversion(self) -> None:
        """Thicker bone transmits less; MONOCHROME1 stores the inverse of MONOCHROME2."""
        bone = tk.rounded_rect_path_length(SHAPE, (32, 24), (6, 20), 10.0)
        soft = tk.ellipsoid_path_length(SHAPE, (32, 24), (20, 28), 30.0)
        intensity = tk.beer_lambert([soft, bone], [0.02, 0.1])
        assert intensity[32, 24] < intensity[32, 5] < intensity[0, 0] == 1.0
        mono2 = tk.radiograph_pixels(intensity, monochrome1=False, bits_stored=12)
        mono1 = tk.radiograph_pixels(intensity, monochrome1=True, bits_stored=12)
        assert mono2.dtype == np.uint16 and mono2.max() == 4095
        assert np.array_equal(mono1, 4095 - mono2)
        assert mono2[32, 24] > mono2[0, 0]  # bone bright in MONOCHROME2

    def test_zero_elastic_field_is_the_identity(self) -> None:
        """Warping with a zero displacement returns the image unchanged."""
        image = tk.rng(3).random(SHAPE)
        assert np.allclose(tk.warp(image, np.zeros((2, *SHAPE))), image)

    def test_shapes_are_where_they_are_asked_to_be(self) -> None:
        """An ellipse contains its centre; a ring does not."""
        assert tk.ellipse_mask(SHAPE, (30, 20), (5, 8))[30, 20]
        ring = tk.ring_mask(SHAPE, (30, 20), 4, 8)
        assert not ring[30, 20] and ring[30, 26]
        assert tk.sector_mask(SHAPE)[40, 24] and not tk.sector_mask(SHAPE)[5, 0]


def _read(path: Path) -> pydicom.Dataset:
    return assert_valid_dicom(path)


class TestDicomWriter:
    def test_siemens_psir_and_philips_magnitude_mr_slices_are_valid(self, tmp_path: Path) -> None:
        """MR slices carry vendor cues, InversionTime and geometry, and pass dciodvfy."""
        subject = dw.Subject(patient_name="PHANTOM^LGE")
        psir = np.arange(-512, 512, dtype=np.int16).reshape(32, 32)
        ds = _read(dw.write(dw.mr_slice(psir, subject=subject, psir=True, inversion_time_ms=280,
                                        position=(10.0, -5.0, 30.0)), tmp_path / "psir.dcm"))
        assert ds.SeriesDescription == "LGE_PSIR" and "PSIR" in ds.ImageType
        assert ds.InversionTime == 280 and list(ds.ImagePositionPatient) == [10.0, -5.0, 30.0]
        assert ds.PixelRepresentation == 1 and ds.pixel_array.min() == -512
        assert ds.PatientName == "PHANTOM^LGE" and ds.PatientID.startswith("PH-")

        mag = np.full((32, 32), 300, np.uint16)
        ds = _read(dw.write(dw.mr_slice(mag, subject=subject, vendor="PHILIPS"), tmp_path / "m.dcm"))
        assert ds.Manufacturer == "Philips Medical Systems" and "M_IR" in ds.ImageType
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage

    def test_us_image_with_tissue_colour_and_spectral_regions_is_valid(self, tmp_path: Path) -> None:
        """An RGB US image keeps its calibration regions and Doppler mode bits."""
        regions = [dw.UsRegion(0, 0, 79, 29, 0.015, 0.015),
                   dw.UsRegion(20, 5, 60, 25, 0.015, 0.015, data_type=dw.REGION_COLOR_FLOW),
                   dw.UsRegion.spectral(0, 30, 79, 59, seconds_per_px=0.01,
                                        cm_per_s_per_px=1.5, baseline_row=45)]
        rgb = tk.rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
        ds = _read(dw.write(dw.us_image(rgb, regions=regions, doppler=True, laterality="L"),
                            tmp_path / "us.dcm"))
        assert ds.PhotometricInterpretation == "RGB"
        assert [r.RegionDataType for r in ds.SequenceOfUltrasoundRegions] == [1, 2, 3]
        assert ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX == pytest.approx(0.015)
        assert ds.ImageType[3] == "0019"  # 2D + PW Doppler + colour flow
        assert np.array_equal(ds.pixel_array, rgb)

    def test_doppler_flag_must_agree_with_the_regions(self) -> None:
        """Claiming Doppler without a Doppler region is refused."""
        with pytest.raises(ValueError, match="Doppler region"):
            dw.us_image(np.zeros((8, 8), np.uint8), regions=[dw.UsRegion(0, 0, 7, 7, 0.1, 0.1)],
                        doppler=True)

    def test_us_cine_is_a_valid_multiframe_with_frame_time(self, tmp_path: Path) -> None:
        """A grey cine has NumberOfFrames, FrameTime and the frame increment pointer."""
        frames = tk.rng(1).integers(0, 255, (6, 40, 50), dtype=np.uint8)
        ds = _read(dw.write(dw.us_cine(frames, 33.3, regions=[dw.UsRegion(0, 0, 49, 39, 0.02, 0.02)]),
                            tmp_path / "cine.dcm"))
        assert ds.NumberOfFrames == 6 and ds.FrameTime == pytest.approx(33.3)
        assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
        assert np.array_equal(ds.pixel_array, frames)

    @pytest.mark.parametrize(("modality", "monochrome1"), [("CR", True), ("DX", False), ("DX", True)])
    def test_radiographs_are_valid_with_window_and_laterality(self, tmp_path: Path, modality: Literal["CR", "DX"],
                                                             monochrome1: bool) -> None:
        """CR and DX For Presentation hands carry VOI window, laterality and photometric cues."""
        pixels = tk.radiograph_pixels(np.linspace(0.1, 1, 48 * 40).reshape(48, 40),
                                      monochrome1=monochrome1)
        ds = _read(dw.write(dw.xray(pixels, modality=modality, monochrome1=monochrome1,
                                    laterality="L", window_center=2048, window_width=4096),
                            tmp_path / "xr.dcm"))
        assert ds.Modality == modality and ds.ImageLaterality == "L"
        assert ds.PhotometricInterpretation == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
        assert ds.WindowCenter == 2048 and ds.BodyPartExamined == "HAND"
        if modality == "DX":
            assert ds.PresentationLUTShape == ("INVERSE" if monochrome1 else "IDENTITY")

    def test_real_looking_patient_data_is_refused(self) -> None:
        """Phantom subjects must be visibly fake."""
        with pytest.raises(ValueError, match="PHANTOM"):
            dw.Subject(patient_name="DOE^JANE")
        with pytest.raises(ValueError, match="PH-"):
            dw.Subject(patient_id="12345")

    def test_files_are_explicit_vr_little_endian_with_file_meta(self, tmp_path: Path) -> None:
        """write() produces a PS3.10 file in Explicit VR Little Endian."""
        path = dw.write(dw.us_image(np.zeros((8, 8), np.uint8), regions=[]), tmp_path / "a.dcm")
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    def test_phantom_uids_are_reproducible(self) -> None:
        """Derived UIDs depend only on their parts."""
        assert dw.phantom_uid("a", "1") == dw.phantom_uid("a", "1") != dw.phantom_uid("a", "2")


class TestDemoSamples:
    def test_every_model_has_a_demo_series_that_the_bundled_routes_send_to_it(self) -> None:
        """`sidecar demo` pushes a phantom series for all eight models, each routed to its own model."""
        from models.registry import FACTORIES, load_predicates
        from sidecar.demo import DEMO_SAMPLES, _sample
        from sidecar.routing import route
        from sidecar.settings import load_settings

        assert set(DEMO_SAMPLES) == set(FACTORIES) and len(FACTORIES) == 8
        routes = load_settings(Path(__file__).resolve().parents[2] / "conf", env={}).routes
        predicates = load_predicates()
        series_uids: set[str] = set()
        for model_id in sorted(FACTORIES):
            make = _sample(model_id)
            assert make is not None, model_id
            series = make(seed=7)
            assert series, model_id
            for ds in series:
                assert route(routes, ds, calling_ae="DEMOCONSOLE", predicates=predicates).model == model_id
            series_uids.update(str(ds.SeriesInstanceUID) for ds in series)
        assert len(series_uids) >= len(FACTORIES)  # no two models share a series
