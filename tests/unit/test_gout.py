"""Gout MTP1: phantoms, view from headers, routing, wrapper, bundled demo weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import sha256_of
from models.findings import Findings
from models.gout_mtp1.transforms import view_of
from models.gout_mtp1.wrapper import ABNORMAL, FINDING_SITE, LABELS, GoutError, GoutModel, build
from models.registry import ModelSpec, build_model, load_predicates
from sidecar.routing import route
from sidecar.settings import load_settings
from train.common.metrics import roc_auc_delong
from train.phantoms.mtp1 import Mtp1Case, case_dataset, demo_series, sample_cases

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _case(view: str = "dorsal", signs: tuple[str, ...] = ("tophus",), seed: int = 3) -> Mtp1Case:
    return Mtp1Case("g", "PH-G1", view, "R", bool(signs), signs, seed)


class TestPhantoms:
    def test_each_patient_has_one_image_per_view_and_one_label(self) -> None:
        """A patient is normal or gouty and contributes dorsal, medial and plantar images."""
        cases = sample_cases(6, seed=1)
        by_patient: dict[str, list[Mtp1Case]] = {}
        for c in cases:
            by_patient.setdefault(c.patient_id, []).append(c)
        for items in by_patient.values():
            assert sorted(c.view for c in items) == ["dorsal", "medial", "plantar"]
            assert len({c.abnormal for c in items}) == 1
            assert all(bool(c.signs) == c.abnormal for c in items)

    def test_phantoms_are_seeded(self) -> None:
        """The same case renders the same pixels."""
        a, b = case_dataset(_case()), case_dataset(_case())
        assert a.PixelData == b.PixelData and a.SOPInstanceUID == b.SOPInstanceUID


class TestView:
    @pytest.mark.parametrize("view", ["dorsal", "medial", "plantar"])
    def test_view_read_from_description_or_view_code(self, view: str) -> None:
        """The view comes from the View Code Sequence or SeriesDescription."""
        assert view_of(case_dataset(_case(view=view))) == view

    def test_view_is_unknown_without_cues(self) -> None:
        """No view code and no view word: "unknown"."""
        ds = case_dataset(_case())
        ds.SeriesDescription = "MTP1"
        if "ViewCodeSequence" in ds:
            del ds.ViewCodeSequence
        assert view_of(ds) == "unknown"


class TestRouting:
    def test_mtp1_images_go_to_gout_before_synovitis(self) -> None:
        """An MTP1 description or a foot without another joint named routes to gout_mtp1."""
        settings = load_settings(CONF)
        ds = case_dataset(_case())
        assert route(settings.routes, ds, calling_ae="CONSOLE", predicates=load_predicates()).model == "gout_mtp1"
        ds.SeriesDescription = "FOREFOOT LONG"
        assert route(settings.routes, ds, calling_ae="CONSOLE", predicates=load_predicates()).model == "gout_mtp1"


class TestWrapper:
    def test_untrained_model_returns_valid_findings_with_views(self) -> None:
        """Per-image classification, P(abnormal), site, laterality; views listed in the notes."""
        torch.manual_seed(0)
        model = build(None, {"torch_threads": 1})
        images = [case_dataset(_case(view=v)) for v in ("dorsal", "plantar")]
        findings = model.predict(model.prepare(images))
        assert isinstance(findings, Findings) and findings.model_id == "gout_mtp1"
        assert len(findings.classifications) == 2 and findings.summary is not None
        c = findings.classifications[0]
        assert c.label in LABELS and c.finding_site == FINDING_SITE and c.laterality == "R"
        assert "image 1: dorsal" in findings.notes[0] and "image 2: plantar" in findings.notes[0]

    def test_threshold_outside_zero_one_is_refused(self) -> None:
        """A threshold option of 1.5 is a configuration error."""
        with pytest.raises(GoutError):
            build(None, {"threshold": 1.5})


def _bundled() -> tuple[Path, str]:
    entry = yaml.safe_load((CONF / "models.yaml").read_text())["models"]["gout_mtp1"]
    return (CONF / entry["weights"]).resolve(), entry["sha256"]


class TestDemoWeights:
    def test_weights_are_small_and_match_configured_sha256(self) -> None:
        """Bundled weights exist, are under 10 MB and hash to conf/models.yaml's value."""
        path, sha = _bundled()
        assert path.stat().st_size < 10 * 1024 * 1024 and sha256_of(path) == sha

    def test_demo_weights_separate_fresh_phantoms_better_than_chance(self) -> None:
        """On a fresh seeded set the loaded model's AUC for abnormal is above 0.65."""
        path, sha = _bundled()
        model = build_model(ModelSpec("gout_mtp1", path, sha, {"torch_threads": 2}))
        cases = sample_cases(24, seed=777)
        assert isinstance(model, GoutModel)
        p = model.probabilities(model.prepare([case_dataset(c) for c in cases]))
        y = np.array([int(c.abnormal) for c in cases])
        assert roc_auc_delong(y, p).auc > 0.65

    def test_demo_series_is_flagged(self) -> None:
        """The demo's gouty MTP1 image is called abnormal by the demo weights."""
        path, sha = _bundled()
        model = build_model(ModelSpec("gout_mtp1", path, sha, {"torch_threads": 2}))
        findings = model.predict(model.prepare(demo_series(seed=7)))
        assert findings.classifications[0].label == ABNORMAL
