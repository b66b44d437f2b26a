"""RA synovitis: grading rule, routing of the four variants, wrappers, bundled demo weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import sha256_of
from models.findings import Findings
from models.registry import ModelSpec, build_model, load_predicates
from models.synovitis.transforms import VARIANTS, joint_site, to_input
from models.synovitis.wrapper import LABELS, SynovitisError, SynovitisModel, build
from sidecar.routing import route
from sidecar.settings import load_settings
from train.common.metrics import one_vs_rest_auc
from train.phantoms.joint_us import JointCase, case_dataset, combined_grade, demo_series, sample_cases

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _case(gs: int = 2, pd: int = 3, seed: int = 5, joint: str = "MCP2") -> JointCase:
    return JointCase("u", "PH-U1", joint, "L", gs, pd, combined_grade(gs, pd), (0, 0), seed)


class TestGradingRule:
    def test_combined_grade_is_zero_without_synovial_hypertrophy(self) -> None:
        """EULAR-OMERACT: no greyscale synovitis means grade 0 (PD is not scored without it)."""
        assert combined_grade(0, 0) == 0

    @pytest.mark.parametrize(("gs", "pd", "want"), [(1, 0, 1), (1, 3, 3), (3, 1, 3), (2, 2, 2), (1, 2, 2)])
    def test_combined_grade_is_the_higher_of_gs_and_pd(self, gs: int, pd: int, want: int) -> None:
        """With synovial hypertrophy the combined grade is max(GS, PD)."""
        assert combined_grade(gs, pd) == want

    def test_cohort_is_seeded(self) -> None:
        """The same seed gives the same cohort."""
        assert sample_cases(5, 3) == sample_cases(5, 3)


class TestRouting:
    @pytest.mark.parametrize(("cine", "doppler", "model"), [
        (False, False, "synovitis_sgs"), (True, False, "synovitis_dgs"),
        (False, True, "synovitis_spd"), (True, True, "synovitis_dpd")])
    def test_variant_follows_cine_and_doppler(self, cine: bool, doppler: bool, model: str) -> None:
        """The bundled routes send static/cine x grey/Doppler joint images to their variant."""
        settings = load_settings(CONF)
        ds = case_dataset(_case(), doppler=doppler, cine=cine)
        header = ds.copy()
        del header.PixelData
        decision = route(settings.routes, header, calling_ae="CONSOLE", predicates=load_predicates())
        assert decision.model == model

    def test_foot_joint_other_than_mtp1_goes_to_synovitis(self) -> None:
        """An MTP2 image with BodyPartExamined FOOT is graded for synovitis, not screened for gout."""
        settings = load_settings(CONF)
        ds = case_dataset(_case(joint="MTP2"), doppler=False, cine=False)
        assert route(settings.routes, ds, calling_ae="CONSOLE", predicates=load_predicates()).model == "synovitis_sgs"


class TestWrapper:
    @pytest.mark.parametrize("variant", sorted(VARIANTS))
    def test_untrained_variant_returns_valid_findings(self, variant: str) -> None:
        """Each variant prepares its own input shape and returns a Classification per image."""
        torch.manual_seed(0)
        spec = VARIANTS[variant]
        model = build(variant, None, {"torch_threads": 1})
        images = [case_dataset(_case(seed=s), doppler=spec.doppler, cine=spec.cine) for s in (1, 2)]
        batch = model.prepare(images)
        assert batch.tensor.shape[-3] == spec.channels and batch.tensor.ndim == (5 if spec.cine else 4)
        findings = model.predict(batch)
        assert isinstance(findings, Findings) and findings.model_id == f"synovitis_{variant}"
        assert len(findings.classifications) == 2 and findings.summary is not None
        c = findings.classifications[0]
        assert c.label in LABELS and abs(sum(c.probabilities.values()) - 1.0) < 1e-6
        assert c.finding_site == "metacarpophalangeal joint 2" and c.laterality == "L"
        assert c.source is not None and c.source.sop_instance_uid == str(images[0].SOPInstanceUID)

    def test_still_given_to_a_cine_variant_is_repeated(self) -> None:
        """A still routed by hand to DPD becomes T identical frames, not an error."""
        x = to_input(case_dataset(_case(), doppler=True, cine=False), "dpd")
        assert x.shape == (8, 2, 128, 128) and np.allclose(x[0], x[-1])

    def test_joint_site_from_description_or_body_part(self) -> None:
        """The joint comes from the description (MCP2), else from BodyPartExamined."""
        ds = demo_series()[0]
        assert joint_site(ds) == "metacarpophalangeal joint 2"
        ds.SeriesDescription = "SCAN"
        ds.BodyPartExamined = "KNEE"
        assert joint_site(ds) == "knee joint"


def _bundled(model_id: str) -> tuple[Path, str]:
    entry = yaml.safe_load((CONF / "models.yaml").read_text())["models"][model_id]
    return (CONF / entry["weights"]).resolve(), entry["sha256"]


class TestDemoWeights:
    @pytest.mark.parametrize("variant", sorted(VARIANTS))
    def test_weights_are_small_and_match_configured_sha256(self, variant: str) -> None:
        """Bundled weights exist, are under 10 MB and hash to conf/models.yaml's value."""
        path, sha = _bundled(f"synovitis_{variant}")
        assert path.stat().st_size < 10 * 1024 * 1024
        assert sha256_of(path) == sha

    def test_checkpoint_of_another_variant_is_refused(self) -> None:
        """SGS weights cannot be loaded as SPD."""
        with pytest.raises(SynovitisError):
            build("spd", _bundled("synovitis_sgs")[0])

    @pytest.mark.parametrize("variant", sorted(VARIANTS))
    def test_demo_weights_grade_fresh_phantoms_better_than_chance(self, variant: str) -> None:
        """On a fresh seeded set the loaded model separates grades (macro one-vs-rest AUC > 0.6)."""
        path, sha = _bundled(f"synovitis_{variant}")
        model = build_model(ModelSpec(f"synovitis_{variant}", path, sha, {"torch_threads": 2}))
        spec = VARIANTS[variant]
        cases = sample_cases(10 if spec.cine else 16, seed=4242, joints_per_patient=3)
        images = [case_dataset(c, doppler=spec.doppler, cine=spec.cine) for c in cases]
        assert isinstance(model, SynovitisModel)
        p = model.probabilities(model.prepare(images))
        y = np.array([c.combined for c in cases])
        aucs = [r.auc for r in one_vs_rest_auc(y, p) if r is not None]
        assert np.mean(aucs) > 0.6
