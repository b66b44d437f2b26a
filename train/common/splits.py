"""Patient-level, stratified, seeded splits.

A patient's rows (studies, series, slices) always land on one side, so no patient is ever in
training and in test together. Stratification is by one label per patient (the majority of its
rows' labels, or the maximum for "any positive / worst grade" studies). Ratios count patients,
as the studies report them (70/15/15 in the LGE study, 6:4 in the gout study). Rows already
marked ``external`` are an external test set and are left exactly as they are.

Allocation within each stratum is systematic sampling from a random start: shuffled patients
take successive positions (start + i) / m on [0, 1), and a position falls in the split whose
cumulative ratio covers it. Each split so gets floor or ceil of ratio x m patients of the stratum,
and a stratum of one patient still goes to a split with probability equal to its ratio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

EXTERNAL = "external"
PatientLabel = Literal["majority", "max"]


def _patient_rows(patient_ids: Sequence[Hashable] | npt.ArrayLike) -> tuple[list[str], dict[str, list[int]]]:
    ids = [str(p) for p in np.asarray(patient_ids, dtype=object).ravel().tolist()]
    rows: dict[str, list[int]] = {}
    for i, pid in enumerate(ids):
        rows.setdefault(pid, []).append(i)
    return ids, rows


def _external_patients(
    ids: list[str], rows: dict[str, list[int]], existing: Sequence[object] | None, external_name: str
) -> set[str]:
    if existing is None:
        return set()
    marks = [str(v) if v is not None else "" for v in np.asarray(existing, dtype=object).ravel().tolist()]
    if len(marks) != len(ids):
        raise ValueError(f"existing has {len(marks)} rows but patient_ids has {len(ids)}")
    ext = {pid for pid, m in zip(ids, marks, strict=True) if m == external_name}
    mixed = [pid for pid in ext if any(marks[i] != external_name for i in rows[pid])]
    if mixed:
        raise ValueError(
            f"{len(mixed)} patient(s) have rows both in the {external_name!r} set and outside it; "
            "an external set must hold whole patients"
        )
    return ext


def _patient_label(values: list[Any], rule: PatientLabel) -> object:
    """The patient's one label from its rows' labels (orderable: numbers or strings)."""
    if rule == "max":
        return max(values)
    counts = Counter(values)
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    try:
        return max(tied)  # ties go to the higher label
    except TypeError:
        return tied[0]


def _strata(
    rows: dict[str, list[int]], patients: list[str], labels: npt.ArrayLike | None, rule: PatientLabel
) -> list[list[str]]:
    """Patients grouped by their one label, each group in a stable (sorted) order."""
    if labels is None:
        return [sorted(patients)]
    lab = np.asarray(labels, dtype=object).ravel().tolist()
    if len(lab) != sum(len(r) for r in rows.values()):
        raise ValueError("labels and patient_ids differ in length")
    groups: dict[str, list[str]] = {}
    for pid in patients:
        key = repr(_patient_label([lab[i] for i in rows[pid]], rule))
        groups.setdefault(key, []).append(pid)
    return [sorted(groups[k]) for k in sorted(groups)]


def _normalised(ratios: Sequence[float], n_names: int) -> npt.NDArray[np.float64]:
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or r.size != n_names:
        raise ValueError(f"{r.size} ratios given for {n_names} split names")
    if (r <= 0).any():
        raise ValueError("every ratio must be positive")
    return r / r.sum()


def patient_split(
    patient_ids: Sequence[Hashable] | npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
    *,
    existing: Sequence[object] | None = None,
    patient_label: PatientLabel = "majority",
    external_name: str = EXTERNAL,
) -> npt.NDArray[np.object_]:
    """The split name of every row: whole patients, stratified by each patient's label, the same
    for the same seed. Ratios are normalised (``(6, 4)`` and ``(0.6, 0.4)`` are the same). Rows
    whose ``existing`` value is ``external_name`` come back as that name and take no part."""
    if len(set(names)) != len(names) or external_name in names:
        raise ValueError(f"split names must be distinct and not {external_name!r}")
    cum = np.cumsum(_normalised(ratios, len(names)))
    cum[-1] = 1.0
    ids, rows = _patient_rows(patient_ids)
    ext = _external_patients(ids, rows, existing, external_name)
    patients = [p for p in rows if p not in ext]
    rng = np.random.default_rng(seed)
    out = np.empty(len(ids), dtype=object)
    for pid in ext:
        out[rows[pid]] = external_name
    for group in _strata(rows, patients, labels, patient_label):
        order = rng.permutation(len(group))
        start = rng.random()
        for pos, j in enumerate(order):
            which = int(np.searchsorted(cum, (start + pos) / len(group), side="right"))
            out[rows[group[j]]] = names[min(which, len(names) - 1)]
    return out


def patient_kfold(
    patient_ids: Sequence[Hashable] | npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    k: int = 5,
    seed: int = 0,
    *,
    existing: Sequence[object] | None = None,
    patient_label: PatientLabel = "majority",
    external_name: str = EXTERNAL,
) -> npt.NDArray[np.int64]:
    """The fold (0..k-1) of every row, -1 for external rows: whole patients, stratified, seeded.
    Patients of each stratum are dealt round-robin from where the previous stratum stopped, so
    fold sizes differ by at most one patient overall. Fold f tests on ``folds == f`` and trains
    on ``(folds != f) & (folds >= 0)``."""
    if k < 2:
        raise ValueError("k must be at least 2")
    ids, rows = _patient_rows(patient_ids)
    ext = _external_patients(ids, rows, existing, external_name)
    patients = [p for p in rows if p not in ext]
    rng = np.random.default_rng(seed)
    out = np.full(len(ids), -1, dtype=np.int64)
    cursor = int(rng.integers(k))
    for group in _strata(rows, patients, labels, patient_label):
        for j in rng.permutation(len(group)):
            out[rows[group[j]]] = cursor % k
            cursor += 1
    return out


def assert_patient_disjoint(patient_ids: Sequence[Hashable] | npt.ArrayLike, splits: npt.ArrayLike) -> None:
    """Raise ValueError if any patient has rows in more than one split (a leak)."""
    seen: dict[str, str] = {}
    leaks = 0
    for pid, s in zip(
        np.asarray(patient_ids, dtype=object).ravel().tolist(), np.asarray(splits, dtype=object).ravel().tolist(),
        strict=True,
    ):
        if seen.setdefault(str(pid), str(s)) != str(s):
            leaks += 1
    if leaks:
        raise ValueError(f"{leaks} row(s) put a patient on more than one side of the split")


def split_indices(
    patient_ids: Sequence[Hashable] | npt.ArrayLike,
    labels: npt.ArrayLike | None,
    ratios: Sequence[float],
    seed: int,
    *,
    patient_label: PatientLabel = "majority",
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, npt.NDArray[np.intp]]:
    """`patient_split`, checked patient-disjoint, as row indices per split name."""
    splits = patient_split(patient_ids, labels, ratios, seed=seed, names=names, patient_label=patient_label)
    assert_patient_disjoint(patient_ids, splits)
    return {name: np.flatnonzero(splits == name) for name in names}
