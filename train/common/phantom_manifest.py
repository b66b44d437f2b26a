"""A labelled phantom validation manifest for the binary models: what `calibrate` reads.

A site calibrates on its own validation manifest (`python -m train <model> manifest`). The demo
weights have none, so `python -m train <model> phantom-manifest --out DIR` writes phantom DICOM
files of a generator seed that training never used, with their labels, into DIR and a manifest CSV
(split `val`, named after the model and the seed) beside them. The demo cards' operating points are chosen on such a manifest and say
so; the figures describe phantoms, not patients.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset

from train.phantoms.dicom_writer import write

#: model id -> (seed, n) -> [(dataset, patient id, label)]
Labelled = Callable[[int, int], list[tuple[Dataset, str, str]]]


def _lge(seed: int, n_patients: int) -> list[tuple[Dataset, str, str]]:
    from train.phantoms.lge import lge_cohort, psir_dataset

    vendors = ("siemens", "philips", "ge")
    return [(psir_dataset(s, vendor=vendors[i % 3]), s.patient_id, s.label)
            for i, s in enumerate(lge_cohort(n_patients, seed))]


def _gout(seed: int, n_patients: int) -> list[tuple[Dataset, str, str]]:
    from train.phantoms.mtp1 import case_dataset, sample_cases

    return [(case_dataset(c), c.patient_id, "abnormal" if c.abnormal else "normal")
            for c in sample_cases(n_patients, seed)]


LABELLED: dict[str, Labelled] = {"lge_qa": _lge, "gout_mtp1": _gout}
FIELDS = ("path", "patient_id", "label", "split")


def write_phantom_manifest(model_id: str, out_dir: Path, *, seed: int, n_patients: int,
                           split: str = "val") -> Path:
    """Write the phantom files and the manifest CSV into `out_dir`; returns the manifest's path."""
    try:
        sample = LABELLED[model_id]
    except KeyError as exc:
        raise ValueError(f"no labelled phantoms for {model_id!r}; one of {', '.join(LABELLED)}") from exc
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    rows = []
    for i, (ds, patient, label) in enumerate(sample(seed, n_patients)):
        path = write(ds, out_dir / "dicom" / f"{i:05d}.dcm")
        rows.append({"path": str(path.relative_to(out_dir)), "patient_id": patient, "label": label, "split": split})
    manifest = out_dir / f"phantoms-{model_id}-seed{seed}.csv"  # the card names the manifest it was chosen on
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return manifest


__all__ = ["LABELLED", "write_phantom_manifest"]
