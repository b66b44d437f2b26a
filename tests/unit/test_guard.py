"""The input-domain guard (models/guard.py): features, scores, verdicts, storage in a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.findings import ImageRef
from models.guard import DomainGuard, GuardError, guard_verdicts, input_features
from train.common.guard import update_models_yaml, write_guard_card

REF = ImageRef("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4")


def _images(seed: int, n: int, scale: float = 1.0) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [np.clip(g.normal(0.2, 0.1 * scale, (1, 32, 32)), -1, 1) for _ in range(n)]


def _fitted(n: int = 200) -> DomainGuard:
    feats = np.stack([input_features(x) for x in _images(0, n)])
    mean = feats.mean(0).astype(np.float64)
    cov = np.cov(feats, rowvar=False) + 1e-3 * np.eye(feats.shape[1])
    inv_cov = np.asarray(np.linalg.inv(cov), dtype=np.float64)
    g0 = DomainGuard(mean, inv_cov, threshold=1.0, quantile=0.99)
    cal = g0.score_features(np.stack([input_features(x) for x in _images(1, 100)]))
    return DomainGuard(mean, inv_cov, float(np.quantile(cal, 0.99)), 0.99, {"n_fit": n})


class TestInputFeatures:
    def test_still_and_cine_give_fixed_length_vectors(self) -> None:
        """A still (C, H, W) and a cine (T, C, H, W) of the same channels give the same length."""
        still = input_features(np.zeros((3, 40, 40)))
        cine = input_features(np.zeros((4, 3, 40, 40)))
        assert still.shape == cine.shape and np.all(np.isfinite(still))

    def test_rejects_a_volume_it_cannot_describe(self) -> None:
        with pytest.raises(GuardError):
            input_features(np.zeros((2, 2, 2, 2, 2)))


class TestDomainGuard:
    def test_in_domain_images_pass_and_foreign_ones_are_flagged(self) -> None:
        """Held-out images of the fitted distribution pass; brighter, noisier ones do not."""
        guard = _fitted()
        same = guard.scores(_images(2, 100))
        other = guard.scores([x + 0.6 for x in _images(3, 20, scale=3.0)])
        assert np.mean(same > guard.threshold) <= 0.05
        assert np.all(other > guard.threshold)

    def test_other_channel_count_is_outside(self) -> None:
        """An input with another channel count cannot be in the domain (infinite score)."""
        guard = _fitted()
        (v,) = guard.verdicts([np.zeros((3, 32, 32))], [REF])
        assert not v.in_domain and v.score == float("inf") and v.source == REF

    def test_verdict_reason_names_no_values_of_the_image_headers(self) -> None:
        guard = _fitted()
        (v,) = guard.verdicts([np.full((1, 32, 32), 0.9)], [REF])
        assert not v.in_domain and v.reason.startswith("input statistics distance")

    def test_no_guard_gives_no_verdicts(self) -> None:
        assert guard_verdicts(None, [np.zeros((1, 8, 8))], [REF]) == ()

    def test_round_trips_through_a_weights_only_checkpoint(self, tmp_path: Path) -> None:
        """Stored as plain tensors and numbers, the guard loads with torch.load(weights_only=True)."""
        guard = _fitted()
        path = tmp_path / "ck.pt"
        torch.save({"state_dict": {}, "metadata": {"domain_guard": guard.to_metadata()}}, path)
        back = DomainGuard.from_metadata(torch.load(path, weights_only=True)["metadata"])
        assert back is not None
        assert back.threshold == pytest.approx(guard.threshold)
        x = _images(5, 3)
        assert np.allclose(back.scores(x), guard.scores(x))

    def test_checkpoint_without_guard_has_none(self) -> None:
        assert DomainGuard.from_metadata({"version": "1"}) is None

    def test_guard_of_another_feature_set_is_refused(self) -> None:
        meta = _fitted().to_metadata()
        meta["features"] = "penultimate_v9"
        with pytest.raises(GuardError, match="feature set"):
            DomainGuard.from_metadata({"domain_guard": meta})


class TestGuardFiles:
    def test_models_yaml_sha_is_replaced_with_comments_kept(self, tmp_path: Path) -> None:
        y = tmp_path / "models.yaml"
        y.write_text("models:\n  # a comment\n  a:\n    weights: a.pt\n    sha256: old\n  b:\n    sha256: keep\n")
        assert update_models_yaml(y, "a", "new")
        assert y.read_text() == "models:\n  # a comment\n  a:\n    weights: a.pt\n    sha256: new\n  b:\n    sha256: keep\n"
        assert not update_models_yaml(y, "c", "x")

    def test_card_section_is_replaced_not_duplicated(self, tmp_path: Path) -> None:
        (tmp_path / "card.md").write_text("# Card\n\n## Known limits\n\nmany\n")
        (tmp_path / "card.yaml").write_text("id: m\n")
        for threshold in (10.0, 12.5):
            write_guard_card(tmp_path, {"threshold": threshold, "quantile": 0.99, "n_fit": 5, "source": "phantoms",
                                        "n_calibration": 5, "calibration_flagged": 0.01})
        md = (tmp_path / "card.md").read_text()
        assert md.count("## Input-domain guard") == 1 and "12.5" in md and "## Known limits" in md
        assert "domain_guard:" in (tmp_path / "card.yaml").read_text()
