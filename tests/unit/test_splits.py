"""Patient-level splits: no leaks, stratified, seeded, external sets left alone."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import pytest

from train.common.splits import assert_patient_disjoint, patient_kfold, patient_split


def _cohort(seed: int, n_patients: int = 300, prevalence: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Rows for patients with 1-6 rows each; a patient's rows share its label."""
    rng = np.random.default_rng(seed)
    pids, labels = [], []
    for p in range(n_patients):
        label = int(rng.random() < prevalence)
        for _ in range(rng.integers(1, 7)):
            pids.append(f"P{p:04d}")
            labels.append(label)
    return np.array(pids), np.array(labels)


def _sides(pids: np.ndarray, splits: np.ndarray) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for p, s in zip(pids.tolist(), splits.tolist(), strict=True):
        sides.setdefault(p, set()).add(str(s))
    return sides


class TestPatientSplit:
    def test_no_patient_on_two_sides_over_many_seeds(self) -> None:
        """Across 40 seeds and three ratio settings, every patient lies on exactly one side."""
        pids, labels = _cohort(0)
        for seed in range(40):
            for ratios, names in (((0.7, 0.15, 0.15), ("train", "val", "test")), ((6, 4), ("train", "test")),
                                  ((0.5, 0.5), ("a", "b"))):
                splits = patient_split(pids, labels, ratios, seed=seed, names=names)
                assert all(len(s) == 1 for s in _sides(pids, splits).values())
                assert set(splits.tolist()) <= set(names)
                assert_patient_disjoint(pids, splits)

    def test_patient_counts_follow_the_ratios(self) -> None:
        """70/15/15 of 300 patients gives 210/45/45 give or take one per stratum."""
        pids, labels = _cohort(1)
        splits = patient_split(pids, labels, seed=3)
        per_patient = {p: next(iter(s)) for p, s in _sides(pids, splits).items()}
        counts = Counter(per_patient.values())
        assert abs(counts["train"] - 210) <= 2
        assert abs(counts["val"] - 45) <= 2
        assert abs(counts["test"] - 45) <= 2

    def test_stratification_holds_the_prevalence_on_each_side(self) -> None:
        """Each side's patient-level prevalence is within 2 points of the whole cohort's."""
        pids, labels = _cohort(2, n_patients=600)
        label_of = dict(zip(pids.tolist(), labels.tolist(), strict=True))
        overall = np.mean(list(label_of.values()))
        for seed in range(10):
            splits = patient_split(pids, labels, seed=seed)
            side_of = {p: next(iter(s)) for p, s in _sides(pids, splits).items()}
            for name in ("train", "val", "test"):
                members = [label_of[p] for p, s in side_of.items() if s == name]
                assert abs(np.mean(members) - overall) < 0.02, (seed, name)

    def test_same_seed_same_split_other_seed_other_split(self) -> None:
        """Deterministic by seed."""
        pids, labels = _cohort(3)
        a = patient_split(pids, labels, seed=11)
        assert (a == patient_split(pids, labels, seed=11)).all()
        assert (a != patient_split(pids, labels, seed=12)).any()

    def test_ratio_scale_does_not_matter(self) -> None:
        """(6, 4) and (0.6, 0.4) are the same split."""
        pids, labels = _cohort(4)
        a = patient_split(pids, labels, (6, 4), seed=0, names=("train", "test"))
        b = patient_split(pids, labels, (0.6, 0.4), seed=0, names=("train", "test"))
        assert (a == b).all()
        per_patient = {p: next(iter(s)) for p, s in _sides(pids, a).items()}
        assert abs(Counter(per_patient.values())["train"] / len(per_patient) - 0.6) < 0.01

    def test_majority_and_max_patient_labels(self) -> None:
        """Patient a (rows 0, 0, 1) is negative by majority and positive by max."""
        pids = ["a", "a", "a", "b"]
        labels = [0, 0, 1, 1]

        def opposite(rule: Literal["majority", "max"], seed: int) -> bool:
            s = patient_split(pids, labels, (0.5, 0.5), seed=seed, names=("x", "y"), patient_label=rule)
            return bool(s[0] != s[3])

        # By max, a and b form one stratum of two, which a 50/50 split always divides.
        assert all(opposite("max", seed) for seed in range(30))
        # By majority they are separate strata of one, placed independently.
        assert not all(opposite("majority", seed) for seed in range(30))

    def test_unlabelled_split_is_still_patient_level(self) -> None:
        """Without labels the split is one stratum, still whole patients."""
        pids, _ = _cohort(5)
        splits = patient_split(pids, None, seed=0)
        assert all(len(s) == 1 for s in _sides(pids, splits).values())

    def test_a_lone_patient_stratum_is_not_always_train(self) -> None:
        """A stratum of one patient lands in val or test for some seeds."""
        pids = ["rare"] + [f"c{i}" for i in range(40)]
        labels = [2] + [0] * 20 + [1] * 20
        seen = {patient_split(pids, labels, seed=s)[0] for s in range(60)}
        assert seen == {"train", "val", "test"}

    def test_external_rows_are_kept_apart_untouched(self) -> None:
        """Rows marked external stay external; no other row becomes external."""
        pids, labels = _cohort(6)
        existing = np.where(np.char.startswith(pids, "P00"), "external", "")
        splits = patient_split(pids, labels, seed=0, existing=existing.tolist())
        assert (splits[existing == "external"] == "external").all()
        assert "external" not in set(splits[existing != "external"].tolist())
        assert all(len(s) == 1 for s in _sides(pids, splits).values())

    def test_a_patient_both_external_and_internal_is_refused(self) -> None:
        """An external set must hold whole patients."""
        with pytest.raises(ValueError, match="both in the 'external' set"):
            patient_split(["a", "a", "b", "c"], [0, 0, 1, 1], existing=["external", "", "", ""])

    def test_bad_ratios_and_names_are_refused(self) -> None:
        """Ratios must match the names and be positive."""
        with pytest.raises(ValueError, match="ratios given"):
            patient_split(["a", "b"], None, (0.5, 0.5), names=("x", "y", "z"))
        with pytest.raises(ValueError, match="positive"):
            patient_split(["a", "b"], None, (1.0, 0.0), names=("x", "y"))
        with pytest.raises(ValueError, match="distinct"):
            patient_split(["a", "b"], None, (1, 1), names=("x", "x"))


class TestPatientKfold:
    def test_every_patient_in_one_fold_and_folds_balanced(self) -> None:
        """Whole patients per fold; fold patient counts differ by at most one."""
        pids, labels = _cohort(7)
        for seed in range(20):
            folds = patient_kfold(pids, labels, k=5, seed=seed)
            sides = _sides(pids, folds)
            assert all(len(s) == 1 for s in sides.values())
            sizes = Counter(next(iter(s)) for s in sides.values())
            assert set(sizes) == {"0", "1", "2", "3", "4"}
            assert max(sizes.values()) - min(sizes.values()) <= 1

    def test_folds_are_stratified(self) -> None:
        """Each fold's prevalence is within 3 points of the cohort's."""
        pids, labels = _cohort(8, n_patients=500)
        label_of = dict(zip(pids.tolist(), labels.tolist(), strict=True))
        overall = np.mean(list(label_of.values()))
        folds = patient_kfold(pids, labels, k=5, seed=0)
        fold_of = {p: int(next(iter(s))) for p, s in _sides(pids, folds).items()}
        for f in range(5):
            assert abs(np.mean([label_of[p] for p, v in fold_of.items() if v == f]) - overall) < 0.03

    def test_external_rows_get_minus_one_and_kfold_is_seeded(self) -> None:
        """External rows sit out (-1); the same seed gives the same folds."""
        pids, labels = _cohort(9)
        existing = np.where(np.char.startswith(pids, "P01"), "external", "train")
        folds = patient_kfold(pids, labels, k=4, seed=2, existing=existing.tolist())
        assert (folds[existing == "external"] == -1).all()
        assert (folds[existing != "external"] >= 0).all()
        assert (folds == patient_kfold(pids, labels, k=4, seed=2, existing=existing.tolist())).all()
        assert (folds != patient_kfold(pids, labels, k=4, seed=3, existing=existing.tolist())).any()


def test_assert_patient_disjoint_catches_a_leak() -> None:
    """One patient on two sides raises."""
    with pytest.raises(ValueError, match="more than one side"):
        assert_patient_disjoint(["a", "a", "b"], ["train", "test", "train"])
