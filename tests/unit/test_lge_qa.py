"""The LGE QA model: network, transforms, labels, routing cues, wrapper and demo weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from sklearn.metrics import roc_auc_score

from models.base import ClinicalModel
from models.findings import Findings
from models.lge_qa import labels as L
from models.lge_qa.net import EfficientNetV2, count_parameters
from models.lge_qa.routing import explain_cues, is_lge_psir
from models.lge_qa.transforms import TransformConfig, pixels_to_tensor, slice_to_tensor
from models.lge_qa.wrapper import build
from train.phantoms.lge import (
    CLEAR_KINDS,
    CONFUSER_KINDS,
    enhanced_psir_dataset,
    lge_cohort,
    lge_patient,
    lge_slice,
    psir_dataset,
    ti_scout_dataset,
)

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "lge_qa" / "weights" / "demo.pt"
DEMO_SHA256 = yaml.safe_load((Path(__file__).resolve().parents[2] / "conf" / "models.yaml").read_text())[
    "models"]["lge_qa"]["sha256"]  # fit-guard rewrites the checkpoint, and models.yaml with it


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def stack() -> list:
    return lge_patient(np.random.default_rng(11), "LGE-TEST-1", n_slices=4)


@pytest.fixture(scope="module")
def demo_model():
    return build(DEMO_WEIGHTS, {"torch_threads": 2})


class TestNet:
    def test_tiny_net_gives_one_logit_per_slice(self) -> None:
        """(N, 1, H, W) in, (N,) logits out."""
        net = EfficientNetV2("tiny").eval()
        with torch.inference_mode():
            out = net(torch.randn(3, 1, 192, 192))
        assert out.shape == (3,)

    def test_sizes_have_the_expected_parameter_counts(self) -> None:
        """tiny < 1 M, b0 ~ 6 M (EfficientNetV2-B0), s ~ 20 M (EfficientNetV2-S)."""
        assert count_parameters(EfficientNetV2("tiny")) < 1_000_000
        assert 5_000_000 < count_parameters(EfficientNetV2("b0")) < 7_000_000
        assert 19_000_000 < count_parameters(EfficientNetV2("s")) < 22_000_000

    def test_eval_forward_is_deterministic(self) -> None:
        """The same input twice gives the same logits in eval mode."""
        net = EfficientNetV2("tiny").eval()
        x = torch.randn(2, 1, 128, 128)
        with torch.inference_mode():
            assert torch.equal(net(x), net(x))

    def test_unknown_size_is_refused(self) -> None:
        """A size name that is not in SIZES raises ValueError."""
        with pytest.raises(ValueError):
            EfficientNetV2("xl")


class TestTransforms:
    def test_psir_sign_survives_the_modality_lut_and_windowing(self) -> None:
        """Siemens-style unsigned pixels with intercept -4096 come out with negatives kept."""
        image = np.zeros((128, 128), dtype=np.float32)
        image[:, :64] = -300.0
        image[:, 64:] = 600.0
        stored = (image + 4096).astype(np.uint16)
        out = pixels_to_tensor(stored, (1.4, 1.4), 1.0, -4096.0, TransformConfig(size=128))
        assert out.shape == (1, 128, 128) and out.dtype == np.float32
        assert out[0, 64, 10] < -0.4 and out[0, 64, 120] == pytest.approx(1.0)

    def test_zero_stays_zero(self) -> None:
        """A nulled (zero) region maps to 0 whatever the scale."""
        image = np.full((64, 64), 500.0, dtype=np.float32)
        image[20:44, 20:44] = 0.0
        out = pixels_to_tensor(image, (1.4, 1.4), config=TransformConfig(size=64))
        assert out[0, 32, 32] == pytest.approx(0.0, abs=1e-6)

    def test_resampling_reaches_the_fixed_spacing_and_size(self) -> None:
        """A 56 mm square at 0.7 mm pixels spans 40 pixels at 1.4 mm, in a 192 x 192 grid."""
        image = np.zeros((300, 300), dtype=np.float32)
        image[110:190, 110:190] = 1000.0  # 80 px x 0.7 mm = 56 mm
        out = pixels_to_tensor(image, (0.7, 0.7), config=TransformConfig(spacing_mm=1.4, size=192))
        assert out.shape == (1, 192, 192)
        width = int((out[0, 96] > 0.5).sum())
        assert abs(width - 40) <= 2

    def test_phantom_dicom_slices_become_fixed_size_tensors_in_range(self, stack: list) -> None:
        """Each vendor's stored form gives (1, 192, 192) float32 in [-1, 1] with negative pixels."""
        for vendor in ("siemens", "philips", "ge"):
            out = slice_to_tensor(psir_dataset(stack[0], vendor=vendor))
            assert out.shape == (1, 192, 192) and out.dtype == np.float32
            assert out.min() >= -1 and out.max() <= 1 and out.min() < 0


class TestLabels:
    def test_all_readers_clearly_absent_or_present_is_high_certainty(self) -> None:
        """Both <= 20 or both >= 80 gives high certainty."""
        assert L.certainty_label([5, 20]) == L.HIGH_CERTAINTY
        assert L.certainty_label([80, 99]) == L.HIGH_CERTAINTY

    def test_hesitation_or_disagreement_is_low_certainty(self) -> None:
        """A score between the bounds, or readers on opposite sides, gives low certainty."""
        assert L.certainty_label([10, 45]) == L.LOW_CERTAINTY
        assert L.certainty_label([10, 90]) == L.LOW_CERTAINTY

    def test_bounds_are_configurable_and_missing_scores_ignored(self) -> None:
        """Custom bounds apply; NaN scores are left out; no score at all is an error."""
        assert L.certainty_label([25, 28], L.VasBounds(30, 70)) == L.HIGH_CERTAINTY
        assert L.certainty_label([15, float("nan")]) == L.HIGH_CERTAINTY
        with pytest.raises(ValueError):
            L.certainty_label([None, float("nan")])
        with pytest.raises(ValueError):
            L.VasBounds(80, 20)


class TestRouting:
    def test_siemens_psir_routes_and_its_magnitude_companion_does_not(self, stack: list) -> None:
        """Siemens *_PSIR is LGE PSIR; *_MAG is not."""
        assert is_lge_psir(psir_dataset(stack[0], vendor="siemens", image="psir"))
        assert not is_lge_psir(psir_dataset(stack[0], vendor="siemens", image="mag"))

    def test_philips_real_ir_routes_and_magnitude_ir_does_not(self, stack: list) -> None:
        """Philips R_IR is LGE PSIR; M_IR is not."""
        assert is_lge_psir(psir_dataset(stack[0], vendor="philips", image="psir"))
        assert not is_lge_psir(psir_dataset(stack[0], vendor="philips", image="mag"))

    def test_ge_real_routes_and_magnitude_does_not(self, stack: list) -> None:
        """GE raw data type 2 (real) routes; 0 (magnitude) does not."""
        assert is_lge_psir(psir_dataset(stack[0], vendor="ge", image="psir"))
        assert not is_lge_psir(psir_dataset(stack[0], vendor="ge", image="mag"))

    def test_ti_scout_is_rejected_even_when_described_as_psir(self, stack: list) -> None:
        """A TI scout fails not_ti_scout, by description and by per-image TI comments."""
        scout = ti_scout_dataset(stack[0], 150, 0)
        assert not is_lge_psir(scout)
        psir_like = psir_dataset(stack[0])
        psir_like.ImageComments = "TI 175"
        assert not is_lge_psir(psir_like)
        assert {n: ok for n, ok, _ in explain_cues(scout)}["not_ti_scout"] is False

    def test_missing_or_malformed_tags_give_false_without_raising(self) -> None:
        """An empty header, or garbage in InversionTime, is simply not LGE PSIR."""
        assert is_lge_psir(Dataset()) is False
        ds = Dataset()
        ds.Modality = "MR"
        ds[0x00180082] = RawDataElement(Tag(0x00180082), "DS", 3, b"abc", 0, True, True)
        ds.ScanningSequence = "IR"
        assert is_lge_psir(ds) is False

    def test_t1_map_cine_and_brain_flair_are_rejected(self, stack: list) -> None:
        """MOLLI, a cine without TI and a long-TI FLAIR are not LGE PSIR."""
        molli = psir_dataset(stack[0], description="MOLLI_T1_MAP_PSIR")
        cine = psir_dataset(stack[0])
        del cine.InversionTime
        flair = psir_dataset(stack[0], description="t2_tirm_tra_dark-fluid PSIR")
        flair.InversionTime = "2500"
        for ds in (molli, cine, flair):
            assert not is_lge_psir(ds)

    def test_explain_lists_every_cue_with_a_detail(self, stack: list) -> None:
        """explain_cues returns (name, passed, detail) for each cue, all passing for PSIR."""
        cues = explain_cues(psir_dataset(stack[0]))
        assert len(cues) >= 6
        assert all(isinstance(n, str) and ok is True and d for n, ok, d in cues)

    def test_header_read_without_pixels_routes(self, stack: list, tmp_path: Path) -> None:
        """A file read with stop_before_pixels still passes (the router reads headers only)."""
        path = tmp_path / "psir.dcm"
        psir_dataset(stack[0]).save_as(path, enforce_file_format=True)
        assert is_lge_psir(pydicom.dcmread(path, stop_before_pixels=True))


class TestWrapper:
    def test_single_frame_slices_give_one_classification_each(self, demo_model, stack: list) -> None:
        """Two slices in, two per-slice Classifications plus a summary out."""
        model = demo_model
        assert isinstance(model, ClinicalModel)
        batch = model.prepare([psir_dataset(s) for s in stack[:2]])
        findings = model.predict(batch)
        assert isinstance(findings, Findings) and findings.model_id == "lge_qa"
        assert len(findings.classifications) == 2 and findings.summary is not None
        for c in findings.classifications:
            assert set(c.probabilities) == set(L.LABELS)
            assert sum(c.probabilities.values()) == pytest.approx(1.0)
            assert c.uncertain == (c.probabilities[L.LOW_CERTAINTY] >= demo_model.threshold)
            assert c.source is not None and c.source.frame is None

    def test_multiframe_gives_one_ref_per_frame(self, demo_model, stack: list) -> None:
        """An Enhanced MR of four frames gives four classifications with frames 1..4."""
        findings = demo_model.predict(demo_model.prepare([enhanced_psir_dataset(stack)]))
        assert [c.source.frame for c in findings.classifications] == [1, 2, 3, 4]

    def test_threshold_option_overrides_the_checkpoint(self, stack: list) -> None:
        """options['threshold'] wins over the checkpoint's threshold."""
        model = build(DEMO_WEIGHTS, {"threshold": 0.999})
        assert model.threshold == 0.999
        findings = model.predict(model.prepare([psir_dataset(stack[0])]))
        assert findings.classifications[0].uncertain == (
            findings.classifications[0].probabilities[L.LOW_CERTAINTY] >= 0.999
        )

    def test_card_carries_version_labels_and_published_figures(self, demo_model) -> None:
        """The card's version comes from the checkpoint; demo weights are not for clinical use."""
        card = demo_model.card
        assert card.id == "lge_qa" and card.version.startswith("0.1.0-demo")
        assert card.labels == ("high_certainty", "low_certainty")
        assert card.not_for_clinical_use and card.published["precision"] == 0.97
        demo_model.warm_up()


class TestDemoWeights:
    def test_demo_weights_are_small_and_match_the_reported_sha256(self) -> None:
        """demo.pt is under 3 MB and its SHA-256 is the one conf/models.yaml gets."""
        data = DEMO_WEIGHTS.read_bytes()
        assert len(data) < 3 * 1024 * 1024
        assert hashlib.sha256(data).hexdigest() == DEMO_SHA256

    def test_demo_model_separates_clear_from_ambiguous_phantoms(self, demo_model) -> None:
        """On 64 fresh phantom slices (seed unseen in training, all vendors) the AUC is at least 0.90."""
        generator = np.random.default_rng(777)
        kinds = [CLEAR_KINDS[i % 2] for i in range(32)] + [CONFUSER_KINDS[i % 5] for i in range(32)]
        slices = [lge_slice(generator, k, patient_id=f"T{i}") for i, k in enumerate(kinds)]
        batch = demo_model.prepare([psir_dataset(s, vendor=("siemens", "philips", "ge")[i % 3])
                                    for i, s in enumerate(slices)])
        p_low = demo_model.probabilities(batch)
        truth = np.array([k in CONFUSER_KINDS for k in kinds], dtype=int)
        assert roc_auc_score(truth, p_low) >= 0.90

    def test_outputs_on_another_seed_family_are_spread_not_pinned(self, demo_model) -> None:
        """Patients of a generator seed family never used in training (default kind mix) get
        probabilities on both sides of the threshold, and not all pinned at 0 or 1."""
        slices = [s for seed in (90_001, 90_002) for s in lge_cohort(3, seed, n_slices=8)]
        batch = demo_model.prepare([psir_dataset(s, vendor=("siemens", "philips", "ge")[i % 3])
                                    for i, s in enumerate(slices)])
        p_low = demo_model.probabilities(batch)
        assert 0.1 <= float(np.mean(p_low >= demo_model.threshold)) <= 0.9
        pinned = (p_low < 0.01) | (p_low > 0.99)
        assert float(np.mean(pinned)) <= 0.8
        assert float(np.std(p_low)) >= 0.15
