"""Virtual breast elastography: generator, transforms, phantoms, wrapper, derived image, routing."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from models.elastography import transforms as T
from models.elastography.box import StrainBox, default_box, place_box, relative_to_box
from models.elastography.net import (
    ElastographyGenerator,
    LesionCropDiscriminator,
    WholeImageDiscriminator,
    lesion_boxes,
)
from models.elastography.wrapper import (
    BURNED_IN,
    LABELS,
    ElastographyError,
    build,
    strain_box,
)
from models.findings import Classification, GeneratedImage
from models.registry import load_predicates
from sidecar.dicom import codes
from sidecar.results import build_results
from sidecar.routing import route
from sidecar.settings import load_settings
from tests.helpers.validate import assert_valid_dicom
from train.phantoms.breast import KINDS, breast_case, console_emode, demo_series, strain_box as phantom_box
from train.phantoms.dicom_writer import REGION_COLOR_FLOW, UsRegion, write

REPO = Path(__file__).resolve().parents[2]
DEMO_WEIGHTS = REPO / "models" / "elastography" / "weights" / "demo.pt"
BUSI = REPO.parent / "shared" / "data" / "busi256"
SIDECAR_YAML = """
ae_title: SIDECAR
destinations:
  - {kind: dicom, name: pacs, host: 127.0.0.1, port: 11112, ae_title: PACS}
"""

needs_weights = pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason=f"demo weights missing: {DEMO_WEIGHTS}")


@pytest.fixture(scope="module")
def demo_model():
    if not DEMO_WEIGHTS.is_file():
        pytest.skip(f"demo weights missing: {DEMO_WEIGHTS}")
    torch.set_num_threads(2)
    return build(DEMO_WEIGHTS, {})


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return demo_series(0)


class TestGenerator:
    def test_outputs_rgb_and_strain_in_range_with_tsukuba_logits(self) -> None:
        """(N, 1, S, S) -> (N, 4, S, S) in [-1, 1] and (N, 5) logits, at 128 and 256."""
        torch.manual_seed(0)
        net = ElastographyGenerator((8, 16, 32, 64)).eval()
        for size in (128, 256):
            with torch.inference_mode():
                out, logits = net.forward_with_score(torch.randn(2, 1, size, size))
            assert out.shape == (2, 4, size, size)
            assert logits is not None and logits.shape == (2, 5)
            assert float(out.abs().max()) <= 1.0 and torch.isfinite(out).all()

    def test_same_seed_same_weights_and_same_output(self) -> None:
        """Two generators built under one seed agree, and eval inference repeats exactly."""
        x = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(3))
        outs = []
        for _ in range(2):
            torch.manual_seed(7)
            net = ElastographyGenerator((8, 16, 32, 64)).eval()
            with torch.inference_mode():
                outs.append(net(x))
        with torch.inference_mode():
            again = net(x)
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], again)

    def test_side_not_a_multiple_of_16_is_refused(self) -> None:
        """An input the four stride-2 stages cannot halve cleanly raises a clear error."""
        with pytest.raises(ValueError, match="multiples of 16"):
            ElastographyGenerator((8, 16, 32, 64))(torch.zeros(1, 1, 100, 100))

    def test_discriminators_judge_whole_image_and_lesion_crop(self) -> None:
        """Both PatchGANs take (B-mode, mask, 4 image channels) and return patch logits."""
        x = torch.zeros(2, 6, 128, 128)
        x[0, 1, 40:60, 50:90] = 1.0
        assert WholeImageDiscriminator()(x).shape == (2, 1, 15, 15)
        assert LesionCropDiscriminator(crop=48)(x).shape == (2, 1, 5, 5)

    def test_lesion_box_covers_the_mask_and_defaults_to_the_centre(self) -> None:
        """The crop box holds the whole lesion; an empty mask gives the central half."""
        mask = torch.zeros(2, 1, 100, 100)
        mask[0, 0, 20:30, 60:80] = 1
        boxes = lesion_boxes(mask)
        x0, y0, x1, y1 = boxes[0].tolist()
        assert x0 <= 60 / 99 * 2 - 1 and x1 >= 79 / 99 * 2 - 1
        assert y0 <= 20 / 99 * 2 - 1 and y1 >= 29 / 99 * 2 - 1
        assert boxes[1].tolist() == [-0.5, -0.5, 0.5, 0.5]


class TestStrainBox:
    def test_box_holds_the_phantom_lesion_with_surrounding_tissue(self) -> None:
        """On the phantoms' own strain, the placed box holds each lesion's centre and is a part of the field."""
        for i in range(12):
            c = breast_case(990 + i, kind=KINDS[1 + i % 4], shape=(200, 240))
            box = place_box(c.bmode, c.mapped)
            ys, xs = np.nonzero(c.lesion)
            assert box.found and box.contains(ys.mean(), xs.mean()), i
            assert (box.y1 - box.y0 + 1) * (box.x1 - box.x0 + 1) <= 0.65 * c.lesion.size

    def test_featureless_region_gets_the_central_default_box(self) -> None:
        """No dark-and-hard candidate: the default box, centred, not marked as found."""
        box = place_box(np.full((100, 120), 0.5), np.full((100, 120), 0.5))
        assert box == default_box((100, 120)) and not box.found
        assert abs((box.x0 + box.x1) / 2 - 59.5) <= 1

    def test_strain_is_shown_relative_to_the_box(self) -> None:
        """The box's median strain becomes the display's middle (green); outside values shift alike."""
        mapped = np.full((50, 50), 0.8)
        mapped[5:30, 5:30] = 0.3  # most of the box
        box = StrainBox(5, 5, 34, 34)
        out = relative_to_box(mapped, box)
        assert np.median(out[box.slices()]) == pytest.approx(0.5)
        assert out[40, 40] == pytest.approx(1.0)

    def test_phantom_console_view_is_b_mode_outside_the_box(self) -> None:
        """The phantom's console view: colour inside the lesion box, grey B-mode outside it."""
        c = breast_case(5, kind="malignant", shape=(160, 200))
        view, box = console_emode(c).astype(int), phantom_box(c)
        coloured = (view.max(axis=2) - view.min(axis=2)) > 10
        outside = np.ones_like(coloured)
        outside[box.slices()] = False
        assert not coloured[outside].any() and coloured[box.slices()].mean() > 0.9


class TestTransforms:
    def test_colour_map_draws_soft_red_and_hard_blue(self) -> None:
        """Mapped strain 1 (soft) is red, 0 (hard) is blue, 0.5 green, as consoles show it."""
        rgb = T.colorize(np.array([1.0, 0.5, 0.0]))
        assert rgb[0].argmax() == 0 and rgb[1].argmax() == 1 and rgb[2].argmax() == 2

    def test_input_is_the_calibrated_region_resized_and_scaled(self, series: list[Dataset]) -> None:
        """The crop is the tissue region of the calibration; the input is (1, S, S) in [-1, 1]."""
        ds = series[0]
        x, region, grey = T.dataset_to_input(ds, 128)
        item = ds.SequenceOfUltrasoundRegions[0]
        assert (region.x0, region.y0, region.x1, region.y1) == (
            item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1)
        assert region.delta_x_cm == pytest.approx(item.PhysicalDeltaX)
        assert x.shape == (1, 128, 128) and x.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert grey.shape == (ds.Rows, ds.Columns)

    def test_frame_without_calibration_falls_back_to_the_lit_area(self, series: list[Dataset]) -> None:
        """Without US Region Calibration the region is the non-dark bounding box of the frame."""
        ds = copy.deepcopy(series[0])
        del ds.SequenceOfUltrasoundRegions
        item = series[0].SequenceOfUltrasoundRegions[0]
        region = T.tissue_region(ds)
        assert not region.calibrated
        assert abs(region.x0 - item.RegionLocationMinX0) <= 3 and abs(region.y1 - item.RegionLocationMaxY1) <= 3

    def test_elastography_and_doppler_images_are_recognised(self, series: list[Dataset]) -> None:
        """Description / ImageType cues and Doppler regions mark an image that is not an input."""
        assert not T.is_elastography_or_doppler(series[0])
        elasto = copy.deepcopy(series[0])
        elasto.SeriesDescription = "BREAST Strain Elasto"
        assert T.is_elastography_or_doppler(elasto)
        doppler = copy.deepcopy(series[0])
        doppler.SequenceOfUltrasoundRegions = DicomSequence(
            [series[0].SequenceOfUltrasoundRegions[0], UsRegion(200, 100, 300, 200, 0.01, 0.01,
                                                                data_type=REGION_COLOR_FLOW).to_item()])
        assert T.is_elastography_or_doppler(doppler)


class TestPhantoms:
    def test_case_is_reproducible_from_its_seed(self) -> None:
        """The same seed draws the same B-mode, strain, lesion and score."""
        a, b = breast_case(11, kind="malignant"), breast_case(11, kind="malignant")
        assert np.array_equal(a.bmode, b.bmode) and np.array_equal(a.mapped, b.mapped)
        assert a.tsukuba == b.tsukuba and np.array_equal(a.lesion, b.lesion)

    def test_pairs_share_the_region_shape_and_value_ranges(self) -> None:
        """B-mode, mapped strain, E-mode and lesion mask line up, values in their ranges."""
        for i, kind in enumerate(KINDS):
            c = breast_case(i, kind=kind, shape=(120, 140))
            assert c.bmode.shape == c.mapped.shape == c.lesion.shape == c.emode.shape[:2]
            assert c.bmode.min() >= 0 and c.bmode.max() <= 1 and c.mapped.min() >= 0 and c.mapped.max() <= 1
            assert c.emode.dtype == np.uint8 and c.lesion.any() == (kind != "normal")

    def test_tsukuba_scores_follow_the_lesion_kind(self) -> None:
        """Benign 1-3, malignant 3-5, cyst 1, shadowing 4-5, normal 0."""
        allowed = {"normal": {0}, "benign": {1, 2, 3}, "malignant": {3, 4, 5}, "cyst": {1}, "shadowing": {4, 5}}
        for kind, scores in allowed.items():
            assert {breast_case(s, kind=kind, shape=(64, 72)).tsukuba for s in range(6)} <= scores

    def test_stiff_lesion_strains_less_than_the_fat(self) -> None:
        """A score 4-5 lesion is harder (lower mapped strain) than the subcutaneous fat above it."""
        cases = [c for c in (breast_case(s, kind="malignant", shape=(160, 180)) for s in range(6)) if c.tsukuba >= 4]
        assert cases
        for c in cases:
            fat = c.mapped[int(0.08 * c.mapped.shape[0]) : int(0.15 * c.mapped.shape[0])]
            assert c.mapped[c.lesion].mean() < fat.mean() - 0.15

    def test_cyst_shows_the_layered_pattern(self) -> None:
        """The cyst's strain is hard on top and soft at the bottom (blue-green-red)."""
        c = breast_case(3, kind="cyst")
        rows = np.nonzero(c.lesion.any(axis=1))[0]
        top = c.mapped[rows[0] : rows[0] + 3][c.lesion[rows[0] : rows[0] + 3]].mean()
        bottom = c.mapped[rows[-1] - 2 : rows[-1] + 1][c.lesion[rows[-1] - 2 : rows[-1] + 1]].mean()
        assert bottom > top + 0.3

    def test_demo_series_is_valid_breast_us_with_region_calibration(self, series: list[Dataset],
                                                                     tmp_path: Path) -> None:
        """Each demo image is a valid US Image (dciodvfy) of one series, BREAST, calibrated."""
        assert len({str(ds.SeriesInstanceUID) for ds in series}) == 1
        for i, ds in enumerate(series):
            assert ds.Modality == "US" and ds.BodyPartExamined == "BREAST"
            assert ds.SequenceOfUltrasoundRegions[0].RegionDataType == 1
            assert_valid_dicom(write(copy.deepcopy(ds), tmp_path / f"{i}.dcm"))

    def test_demo_series_is_deterministic(self) -> None:
        """The same seed gives the same UIDs and pixels."""
        a, b = demo_series(1), demo_series(1)
        assert [x.SOPInstanceUID for x in a] == [x.SOPInstanceUID for x in b]
        assert a[0].PixelData == b[0].PixelData


class TestWrapper:
    def test_generated_image_keeps_the_frame_and_marks_it(self, demo_model, series: list[Dataset]) -> None:
        """One RGB image per source at the source's size, elastogram inside the lesion box only."""
        batch = demo_model.prepare(series)
        findings = demo_model.predict(batch)
        strain = demo_model.generate(batch.tensor).strain
        assert len(findings.images) == len(series)
        for i, (image, ds) in enumerate(zip(findings.images, series, strict=True)):
            assert isinstance(image, GeneratedImage) and image.photometric == "RGB"
            assert image.pixels.shape == (ds.Rows, ds.Columns, 3)
            assert image.source.sop_instance_uid == ds.SOPInstanceUID
            region = batch.regions[i]
            box, _ = strain_box(batch.frames[i], region, strain[i])
            px = image.pixels[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1].astype(int)
            coloured = (px.max(axis=2) - px.min(axis=2)) > 10
            in_box = np.zeros_like(coloured)
            in_box[box.y0 + 1 : box.y1, box.x0 + 1 : box.x1] = True  # inside the outline
            assert coloured[in_box].mean() > 0.9
            clear = np.zeros_like(coloured)  # the region less the colour bar and the burned-in notice
            clear[: min(px.shape[0], ds.Rows - 24 - region.y0), : px.shape[1] - 24] = True
            assert not coloured[~in_box & clear].any()
            assert in_box.mean() < 0.65  # a box, not the whole field
            assert "NOT FOR DIAGNOSIS" in image.description
        assert "NOT FOR DIAGNOSIS" in BURNED_IN

    def test_lesion_phantoms_get_the_box_around_their_lesion(self, demo_model) -> None:
        """Through the generator: the placed box holds the lesion centre in >= 90 % of lesion phantoms."""
        cases = [breast_case(880_000 + i, kind=KINDS[1 + i % 4]) for i in range(16)]
        x = torch.from_numpy(np.stack([T.region_to_input(c.bmode, demo_model.size) for c in cases]))
        strain = demo_model.generate(x).strain
        hits = []
        for c, s in zip(cases, strain, strict=True):
            box = place_box(c.bmode, T.resize(s, *c.bmode.shape))
            ys, xs = np.nonzero(c.lesion)
            hits.append(box.contains(ys.mean(), xs.mean()))
        assert np.mean(hits) >= 0.9

    def test_tsukuba_score_has_five_probabilities(self, demo_model, series: list[Dataset]) -> None:
        """Each image gets a Tsukuba Classification whose five probabilities sum to one."""
        findings = demo_model.predict(demo_model.prepare(series))
        assert len(findings.classifications) == len(series)
        for c in findings.classifications:
            assert isinstance(c, Classification) and c.label in LABELS
            assert sum(c.probabilities.values()) == pytest.approx(1.0, abs=1e-6)

    def test_inference_is_deterministic(self, demo_model, series: list[Dataset]) -> None:
        """The same image gives the same pixels twice."""
        a = demo_model.predict(demo_model.prepare(series[:1])).images[0].pixels
        b = demo_model.predict(demo_model.prepare(series[:1])).images[0].pixels
        assert np.array_equal(a, b)

    def test_elastography_image_alone_is_refused(self, series: list[Dataset]) -> None:
        """A job holding only an elastogram raises rather than generating from it."""
        model = build(None, {"input_size": 128})
        elasto = copy.deepcopy(series[0])
        elasto.SeriesDescription = "BREAST E-MODE"
        with pytest.raises(ElastographyError, match="no B-mode image"):
            model.prepare([elasto])

    @needs_weights
    def test_busi_malignant_lesions_come_out_stiffer_than_fat(self, demo_model) -> None:
        """On real BUSI B-mode, outputs are finite and in range, and the lesion (its BUSI mask where
        present; busi256 has none, so the darkest fifth of the central region) is stiffer than
        the subcutaneous fat band on average over 24 seeded malignant cases."""
        if not BUSI.is_dir():
            pytest.skip(f"BUSI images not found at {BUSI} (../shared/data/busi256 beside the clone)")
        from PIL import Image

        with (BUSI / "labels_captions.csv").open() as fh:
            rows = [r for r in csv.DictReader(fh) if r["label"] == "malignant"]
        rng = np.random.default_rng(0)
        chosen = [rows[i] for i in sorted(rng.choice(len(rows), size=24, replace=False))]
        size = demo_model.size
        grey = [T.to_grey(np.asarray(Image.open(BUSI / r["image_path"]).convert("RGB"))) for r in chosen]
        x = torch.from_numpy(np.stack([T.region_to_input(g, size) for g in grey]))
        gen = demo_model.generate(x)
        assert np.isfinite(gen.strain).all() and np.isfinite(gen.emode).all()
        assert gen.strain.min() >= 0 and gen.strain.max() <= 1 and gen.emode.max() <= 1
        diffs = []
        for row, g, strain in zip(chosen, grey, gen.strain, strict=True):
            small = T.resize(g, size, size)
            c = slice(size // 4, 3 * size // 4)
            centre = np.zeros_like(small, dtype=bool)
            centre[c, c] = True
            mask_path = BUSI / row["image_path"].replace(".png", "_mask.png")
            if mask_path.is_file():  # the BUSI lesion mask, where the folder has it
                mask = np.asarray(Image.open(mask_path).convert("L"), dtype=np.float32) / 255.0
                lesion = T.resize(mask, size, size) > 0.5
            else:  # no masks in busi256: the darkest fifth of the smoothed central region
                smooth = ndimage.gaussian_filter(small, 3)
                lesion = centre & (smooth <= np.quantile(smooth[centre], 0.2))  # hypoechoic mass
            fat = np.zeros_like(centre)
            fat[int(0.06 * size) : int(0.2 * size), c] = True  # subcutaneous fat band
            diffs.append(strain[fat].mean() - strain[lesion].mean())
        assert float(np.mean(diffs)) > 0.0, f"lesion not stiffer than fat on average: {np.mean(diffs):.3f}"


class TestDerivedImage:
    def test_sc_keeps_geometry_references_source_and_validates(self, demo_model, series: list[Dataset]) -> None:
        """The SC is DERIVED\\SECONDARY in a new series of the study, same rows, columns and
        region calibration, references the B-mode with derivation codes, passes dciodvfy."""
        src = series[0]
        findings = demo_model.predict(demo_model.prepare([src]))
        sr, sc = build_results(findings, [src], demo_model.card, ["sr", "sc"],
                               input_uid=str(src.SeriesInstanceUID), kind="series")
        assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
        assert (sc.Rows, sc.Columns) == (src.Rows, src.Columns)
        assert sc.SequenceOfUltrasoundRegions == src.SequenceOfUltrasoundRegions
        ref = sc.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == codes.SOURCE_FOR_PROCESSING.value
        assert sc.DerivationCodeSequence[0].CodeValue == codes.AI_GENERATED_IMAGE.value
        assert "NOT FOR DIAGNOSIS" in sc.SeriesDescription and sc.BurnedInAnnotation == "YES"
        back = assert_valid_dicom(sc)
        assert back.pixel_array.shape == (src.Rows, src.Columns, 3)
        assert_valid_dicom(sr)
        assert sr.StudyInstanceUID == src.StudyInstanceUID


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("conf")
    shutil.copy(REPO / "conf" / "routes.yaml", folder / "routes.yaml")
    (folder / "sidecar.yaml").write_text(SIDECAR_YAML, encoding="utf-8")
    return load_settings(folder, env={}).routes


class TestRouting:
    def _model(self, rules, ds: Dataset) -> str | None:
        return route(rules, ds, calling_ae="CONSOLE", predicates=load_predicates()).model

    def test_breast_b_mode_goes_to_the_generator(self, rules, series: list[Dataset]) -> None:
        """A breast B-mode image (body part coded, or only described) routes to the model."""
        assert self._model(rules, series[0]) == "breast_elastography"
        described = copy.deepcopy(series[0])
        del described.BodyPartExamined
        described.SeriesDescription = "Breast L 2 o'clock"
        assert self._model(rules, described) == "breast_elastography"

    @pytest.mark.parametrize("description", ["BREAST ELASTO", "Breast strain", "breast E-mode", "BREAST SWE"])
    def test_elastography_image_is_not_sent_back(self, rules, series: list[Dataset], description: str) -> None:
        """An elastogram (named in the description) does not go into the generator."""
        ds = copy.deepcopy(series[0])
        ds.SeriesDescription = description
        assert self._model(rules, ds) != "breast_elastography"

    def test_elastography_image_type_is_not_sent_back(self, rules, series: list[Dataset]) -> None:
        """An image whose ImageType says STRAIN or ELASTO does not go into the generator."""
        for value in ("STRAIN", "ELASTO"):
            ds = copy.deepcopy(series[0])
            ds.ImageType = ["DERIVED", "PRIMARY", "BREAST", value]
            assert self._model(rules, ds) != "breast_elastography"

    def test_doppler_image_is_not_sent_to_the_generator(self, rules, series: list[Dataset]) -> None:
        """A breast image with a colour-flow region is not a B-mode input."""
        if "us.has_doppler" not in load_predicates():
            pytest.skip("models.us (issue 5) not installed: us.has_doppler unavailable")
        ds = copy.deepcopy(series[0])
        ds.SequenceOfUltrasoundRegions = DicomSequence(
            [series[0].SequenceOfUltrasoundRegions[0], UsRegion(200, 100, 300, 200, 0.01, 0.01,
                                                                data_type=REGION_COLOR_FLOW).to_item()])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "BREAST", "0011"]
        assert self._model(rules, ds) != "breast_elastography"

    def test_our_own_secondary_capture_is_not_sent_back(self, rules, series: list[Dataset]) -> None:
        """The SC the model produced (BREAST, breast description) does not re-enter the generator."""
        model = build(None, {"input_size": 128})
        findings = model.predict(model.prepare(series[:1]))
        sc = build_results(findings, series[:1], model.card, ["sc"], input_uid="1.2.3", kind="series")[0]
        assert self._model(rules, sc) != "breast_elastography"


def test_task_is_registered_with_its_alias() -> None:
    """`python -m train breast_elastography` (and `elastography`) reach the same task."""
    import importlib

    from train.tasks import TASK_MODULES, TASKS

    importlib.import_module("train.elastography.task")

    assert "train.elastography.task" in TASK_MODULES
    assert TASKS["breast_elastography"] is TASKS["elastography"]


def test_demo_weights_are_small_and_load_safely() -> None:
    """The bundled weights are under 15 MB and load with weights_only=True."""
    if not DEMO_WEIGHTS.is_file():
        pytest.skip(f"demo weights missing: {DEMO_WEIGHTS}")
    assert DEMO_WEIGHTS.stat().st_size < 15 * 2**20
    blob = torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True)
    assert blob["metadata"]["not_for_clinical_use"] is True


def test_read_back_of_the_written_demo_file_decodes_the_same(series: list[Dataset], tmp_path: Path) -> None:
    """A demo image written to disk and read back gives the same network input."""
    path = write(copy.deepcopy(series[1]), tmp_path / "b.dcm")
    a, _, _ = T.dataset_to_input(series[1], 128)
    b, _, _ = T.dataset_to_input(pydicom.dcmread(path), 128)
    assert np.array_equal(a, b)


def _pair_manifest(folder: Path, n_patients: int = 3, per_patient: int = 2) -> Path:
    """B-mode phantoms written as DICOM, their colour E-mode as region-sized PNG targets; one
    patient per split (train, val, test); lesion rows carry label_tsukuba and label_box."""
    from PIL import Image

    from train.phantoms.breast import bmode_dataset
    from train.phantoms.dicom_writer import Subject, phantom_uid

    splits = ("train", "val", "test")
    rows = []
    for p in range(n_patients):
        subject = Subject(patient_id=f"PH-EL{p:02d}", patient_name="PHANTOM^ELASTO",
                          study_uid=phantom_uid("el-study", str(p)))
        series_uid = phantom_uid("el-series", str(p))
        for k in range(per_patient):
            kind = ("malignant", "normal", "benign", "cyst")[(p + k) % 4]
            case = breast_case(9000 + 10 * p + k, kind=kind, shape=(120, 140))
            ds = bmode_dataset(case, subject=subject, series_uid=series_uid, instance=k + 1, vendor=p)
            write(ds, folder / f"p{p}_{k}.dcm")
            Image.fromarray(case.emode).save(folder / f"p{p}_{k}_strain.png")
            box = ""
            if case.lesion.any():
                region = T.tissue_region(ds)
                ys, xs = np.nonzero(case.lesion)
                box = f"{region.x0 + xs.min()} {region.y0 + ys.min()} {region.x0 + xs.max()} {region.y0 + ys.max()}"
            rows.append({"path": f"p{p}_{k}.dcm", "patient_id": subject.patient_id,
                         "label_box": box, "label_target_path": f"p{p}_{k}_strain.png",
                         "label_tsukuba": str(case.tsukuba or ""), "split": splits[p % 3]})
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


class TestManifestPairs:
    def test_colour_strain_reads_back_through_the_colour_map(self) -> None:
        """A colorized strain map inverts to the strain it was drawn from (within a level)."""
        from train.elastography.task import strain_from_colour

        mapped = np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(8, 0)
        back = strain_from_colour(T.colorize(mapped).astype(np.float32) / 255.0)
        assert np.abs(back - mapped).max() <= 0.02

    def test_pair_is_the_serving_input_with_the_target_cropped_alike(self, tmp_path: Path) -> None:
        """The B-mode input equals the serving transform; the target keeps the phantom's strain."""
        from train.elastography.task import manifest_arrays

        manifest = _pair_manifest(tmp_path, n_patients=1, per_patient=2)
        data = manifest_arrays(manifest, "train", 64)
        serving, _, _ = T.dataset_to_input(pydicom.dcmread(tmp_path / "p0_0.dcm"), 64)
        assert data.x.shape == (2, 2, 64, 64) and data.y.shape == (2, 4, 64, 64)
        assert np.array_equal(data.x[0, :1], serving)
        case = breast_case(9000, kind="malignant", shape=(120, 140))
        truth = T.resize(case.mapped, 64, 64)
        assert np.corrcoef(T.from_unit(data.y[0, 3]).ravel(), truth.ravel())[0, 1] > 0.95
        assert data.x[0, 1].sum() > 0 and data.x[1, 1].sum() == 0  # lesion box, normal case
        assert data.tsukuba[0] == case.tsukuba and data.tsukuba[1] == 0

    def test_fit_and_evaluate_on_a_manifest_of_real_pairs(self, tmp_path: Path) -> None:
        """fit runs fit_gan on the train/val rows; evaluate writes the NCC/SSIM report for test."""
        import json

        from train.common.trainer import GanConfig
        from train.elastography.task import task_evaluate, task_fit
        from train.tasks import EvaluateRequest, FitRequest

        manifest = _pair_manifest(tmp_path)
        config = GanConfig(epochs=1, max_steps_per_epoch=1, patience=0, progress=False, device="cpu", seed=0)
        result = task_fit(FitRequest(out_dir=tmp_path / "fit", config=config, manifest=manifest, batch_size=2))
        assert (tmp_path / "fit" / "breast_elastography.pt").is_file()
        out = task_evaluate(EvaluateRequest(checkpoint=Path(result.best_checkpoint), out_dir=tmp_path / "eval",
                                            manifest=manifest, split="test"))
        metrics = json.loads((out / "metrics.json").read_text())
        assert (out / "report.md").is_file()
        assert metrics["extra"]["n_images"] == 2
        assert np.isfinite(metrics["summary"]["ncc"]["value"])
        assert np.isfinite(metrics["summary"]["ncc.median"]["value"])

    def test_row_without_target_is_named_in_the_error(self, tmp_path: Path) -> None:
        """A missing target image fails with the manifest file, its line and the column."""
        from train.common.manifest import ManifestError
        from train.elastography.task import manifest_arrays

        manifest = _pair_manifest(tmp_path, n_patients=1, per_patient=2)
        (tmp_path / "p0_1_strain.png").unlink()
        with pytest.raises(ManifestError, match=r"pairs\.csv:3: column 'label_target_path'.*p0_1_strain\.png"):
            manifest_arrays(manifest, "train", 64)
