"""Fitting the input-domain guard (models/guard.py) and storing it in a checkpoint.

`fit_guard` describes training inputs through the served model's own `prepare` and
`guard_inputs` (so the guard sees what the network sees), fits their mean and a Ledoit-Wolf
shrunk covariance (scikit-learn), and sets the threshold at `quantile` of the scores of held-out
in-domain inputs (another seed). `store_guard` writes it into the checkpoint's metadata and
`update_models_yaml` puts the new SHA-256 into conf/models.yaml (the comments kept).

In-domain data without a manifest comes from the task's phantom generator (`phantom_inputs`),
one sampler per model id; a manifest's files (`manifest_inputs`) serve a site's own data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import torch
from pydicom import Dataset
from sklearn.covariance import LedoitWolf

from models.checkpoint import sha256_of
from models.guard import FEATURES, METADATA_KEY, DomainGuard, input_features

Sampler = Callable[[int, int], list[Dataset]]


def _lge(seed: int, n: int) -> list[Dataset]:
    from train.phantoms.lge import lge_cohort, psir_dataset

    vendors = ("siemens", "philips", "ge")
    items = lge_cohort(max(1, n // 8 + 1), seed)[:n]
    return [psir_dataset(it, vendor=vendors[i % 3]) for i, it in enumerate(items)]


def _joint_us(doppler: bool, cine: bool) -> Sampler:
    def sample(seed: int, n: int) -> list[Dataset]:
        from train.phantoms.joint_us import case_dataset, sample_cases

        cases = sample_cases(max(1, n // 4 + 1), seed)[:n]
        return [case_dataset(c, doppler=doppler, cine=cine) for c in cases]
    return sample


def _gout(seed: int, n: int) -> list[Dataset]:
    from train.phantoms.mtp1 import case_dataset, sample_cases

    return [case_dataset(c) for c in sample_cases(max(1, n // 3 + 1), seed)[:n]]


def _breast(seed: int, n: int) -> list[Dataset]:
    from train.phantoms.breast import bmode_dataset, breast_cohort
    from train.phantoms.dicom_writer import Subject, phantom_uid

    subject = Subject(patient_id=f"PH-BRG{seed}", patient_name="PHANTOM^BREAST", patient_sex="F",
                      study_uid=phantom_uid("guard-breast", str(seed)))
    series = phantom_uid("guard-breast-series", str(seed))
    return [bmode_dataset(c, subject=subject, series_uid=series, instance=i + 1, vendor=i)
            for i, c in enumerate(breast_cohort(n, seed))]


def _hand(seed: int, n: int) -> list[Dataset]:
    from train.phantoms.hand import hand_cohort

    return [h.dataset for h in hand_cohort(n, seed)]


SAMPLERS: dict[str, Sampler] = {
    "lge_qa": _lge,
    "synovitis_sgs": _joint_us(False, False),
    "synovitis_dgs": _joint_us(False, True),
    "synovitis_spd": _joint_us(True, False),
    "synovitis_dpd": _joint_us(True, True),
    "gout_mtp1": _gout,
    "breast_elastography": _breast,
    "hand_joints": _hand,
}

#: default number of phantom inputs to fit on and to calibrate on (cines are slower to make)
DEFAULT_N: dict[str, tuple[int, int]] = {
    "lge_qa": (400, 200), "synovitis_dgs": (40, 30), "synovitis_dpd": (40, 30),
}


def phantom_inputs(model_id: str, seed: int, n: int) -> list[Dataset]:
    """`n` in-domain phantom datasets of `model_id` from generator seed `seed`."""
    try:
        sampler = SAMPLERS[model_id]
    except KeyError as exc:
        raise ValueError(f"no phantom sampler for model {model_id!r}") from exc
    return sampler(seed, n)


def manifest_inputs(manifest: Path, split: str) -> list[Dataset]:
    """The DICOM files of one split of a manifest CSV (its `path` column)."""
    from train.common.manifest import Manifest

    m = Manifest.read(manifest).split(split)
    if len(m) == 0:
        raise ValueError(f"{manifest} has no rows in split {split!r}")
    return [pydicom.dcmread(m.resolve(r)) for r in m]


def features_of(model: Any, datasets: Sequence[Dataset]) -> npt.NDArray[np.float64]:
    """(N, D) guard features of datasets, one prepare per dataset (as the worker would)."""
    rows: list[npt.NDArray[np.float64]] = []
    for ds in datasets:
        inputs, _ = model.guard_inputs(model.prepare([ds]))
        rows.extend(input_features(x) for x in inputs)
    return np.stack(rows)


@dataclass(frozen=True)
class GuardFit:
    guard: DomainGuard
    fit_scores: npt.NDArray[np.float64]
    calibration_scores: npt.NDArray[np.float64]


def fit_guard(model: Any, train: Sequence[Dataset], calibration: Sequence[Dataset], *, quantile: float = 0.99,
              source: str = "phantoms") -> GuardFit:
    """Fit on `train`, threshold at `quantile` of the scores of held-out `calibration` inputs."""
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile {quantile} must lie in [0.5, 1)")
    x_fit = features_of(model, train)
    x_cal = features_of(model, calibration)
    if len(x_fit) < 10 or len(x_cal) < 10:
        raise ValueError("fitting a domain guard needs at least 10 fit and 10 calibration inputs")
    scale = x_fit.std(axis=0) + 1e-6  # standardise so shrinkage treats every feature alike
    lw = LedoitWolf().fit(x_fit / scale)
    precision = lw.precision_ / np.outer(scale, scale)
    mean = lw.location_ * scale
    provisional = DomainGuard(mean, precision, threshold=1.0, quantile=quantile)
    s_fit = provisional.score_features(x_fit)
    s_cal = provisional.score_features(x_cal)
    threshold = float(np.quantile(s_cal, quantile))
    calibration_figures = {
        "source": source, "n_fit": int(len(x_fit)), "n_calibration": int(len(x_cal)),
        "shrinkage": round(float(lw.shrinkage_), 4),
        "calibration_flagged": round(float(np.mean(s_cal > threshold)), 4),
        "fit_flagged": round(float(np.mean(s_fit > threshold)), 4),
        "calibration_score_median": round(float(np.median(s_cal)), 3),
    }
    guard = DomainGuard(mean, precision, threshold, quantile, calibration_figures, FEATURES)
    return GuardFit(guard, s_fit, s_cal)


def store_guard(checkpoint: Path, guard: DomainGuard, out: Path | None = None) -> str:
    """Write `guard` into the checkpoint's metadata (in place unless `out`); returns the new SHA-256."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not isinstance(blob.get("metadata"), dict):
        raise ValueError(f"{checkpoint} is not a checkpoint with metadata")
    blob["metadata"][METADATA_KEY] = guard.to_metadata()
    target = out or checkpoint
    tmp = target.with_suffix(target.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(target)
    return sha256_of(target)


def update_models_yaml(models_yaml: Path, model_id: str, sha256: str) -> bool:
    """Set `model_id`'s sha256 in conf/models.yaml in place, comments kept; False when absent."""
    lines = models_yaml.read_text().splitlines(keepends=True)
    inside = False
    for i, line in enumerate(lines):
        if re.match(rf"^  {re.escape(model_id)}:(\s|$)", line):
            inside = True
            continue
        if inside and re.match(r"^  \S", line):
            break
        if inside and re.match(r"^    sha256:", line):
            lines[i] = f"    sha256: {sha256}\n"
            models_yaml.write_text("".join(lines))
            return True
    return False


def foreign_flagged(guard: DomainGuard, model: Any, datasets: Sequence[Dataset]) -> tuple[int, int, int]:
    """(flagged by the guard, refused by prepare, total) on images that are not the model's domain."""
    flagged = refused = 0
    for ds in datasets:
        try:
            inputs, _ = model.guard_inputs(model.prepare([ds]))
        except Exception:  # any refusal of prepare counts: the model does not answer
            refused += 1
            continue
        if np.any(guard.scores(inputs) > guard.threshold):
            flagged += 1
    return flagged, refused, len(datasets)


__all__ = ["DEFAULT_N", "SAMPLERS", "GuardFit", "features_of", "fit_guard", "foreign_flagged",
           "manifest_inputs", "phantom_inputs", "store_guard", "update_models_yaml"]


# -- the model card's domain-guard section and the fit-guard command ---------------------------

#: model id -> folder of its card.md / card.yaml
CARD_DIRS: dict[str, Path] = {
    "lge_qa": Path("models/lge_qa"), "gout_mtp1": Path("models/gout_mtp1"),
    "breast_elastography": Path("models/elastography"), "hand_joints": Path("models/hand_joints"),
    **{f"synovitis_{v}": Path(f"models/synovitis/cards/{v}") for v in ("sgs", "dgs", "spd", "dpd")},
}
_BEGIN, _END = "<!-- domain-guard:begin -->", "<!-- domain-guard:end -->"


def guard_card_markdown(summary: Mapping[str, Any]) -> str:
    """The card.md section of a fitted guard (between markers, so a refit replaces it)."""
    foreign = summary.get("foreign")
    lines = [
        _BEGIN, "## Input-domain guard", "",
        "Every input is checked before the model answers: the Mahalanobis distance of statistics of the "
        "prepared input (intensity quantiles, saturation, gradient and Laplacian energy, spectrum bands, "
        "a coarse layout thumbnail; models/guard.py) to the training inputs. Above the threshold the "
        "result says \"not assessed: outside the model's validated input domain\" and raises no alert.", "",
        "| figure | value |", "|---|---|",
        f"| fitted on | {summary.get('n_fit')} inputs ({summary.get('source')}) |",
        f"| threshold | {summary.get('threshold')} (quantile {summary.get('quantile')} of "
        f"{summary.get('n_calibration')} held-out in-domain inputs) |",
        f"| held-out in-domain inputs flagged | {_pct(summary.get('calibration_flagged'))} (calibration seed) |",
    ]
    if summary.get("test_flagged") is not None:
        lines.append(f"| held-out in-domain inputs flagged, another seed | {_pct(summary.get('test_flagged'))} "
                     f"of {summary.get('n_test')} |")
    if isinstance(foreign, Mapping):
        lines.append(f"| foreign images (pydicom-data MR, CT, US, CR) not assessed | {foreign.get('flagged')} "
                     f"flagged + {foreign.get('refused')} refused by prepare, of {foreign.get('total')} |")
    lines += ["", "Penultimate-layer features are not part of this guard yet: it sees the input only.", _END]
    return "\n".join(lines) + "\n"


def _pct(v: Any) -> str:
    return f"{100 * float(v):.1f} %" if v is not None else "n/a"


def write_guard_card(card_dir: Path, summary: Mapping[str, Any]) -> None:
    """Put the guard's figures into card.yaml (`domain_guard`) and card.md (its own section)."""
    import yaml

    y = card_dir / "card.yaml"
    data = yaml.safe_load(y.read_text()) if y.is_file() else {}
    data["domain_guard"] = dict(summary)
    y.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    md = card_dir / "card.md"
    text = md.read_text() if md.is_file() else ""
    section = guard_card_markdown(summary)
    if _BEGIN in text and _END in text:
        head, rest = text.split(_BEGIN, 1)
        text = head + section + rest.split(_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text)


def foreign_datasets() -> list[Dataset]:
    """The MR, CT, US and CR files of pydicom's test data and pydicom-data whose pixels decode."""
    import glob
    import os

    import pydicom.data

    dirs = [os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")]
    try:
        import data_store

        dirs.append(os.path.join(os.path.dirname(data_store.__file__), "data"))
    except ImportError:
        pass
    out: list[Dataset] = []
    for d in dirs:
        for f in sorted(glob.glob(os.path.join(d, "*.dcm"))):
            try:
                ds = pydicom.dcmread(f)
                if str(ds.get("Modality", "")) not in ("MR", "CT", "US", "CR"):
                    continue
                _ = ds.pixel_array  # decodable pixels only
            except Exception:  # a test file this pydicom cannot read is simply not used
                continue
            out.append(ds)
    return out


@dataclass(frozen=True)
class FitGuardRequest:
    model_id: str
    checkpoint: Path
    models_yaml: Path | None = None  # update this model's sha256 here
    card_dir: Path | None = None
    manifest: Path | None = None  # fit on its train split, calibrate on val; else phantoms
    seed: int = 7001  # phantom seeds: fit seed, calibration seed + 1, test seed + 2
    n_fit: int | None = None
    n_calibration: int | None = None
    quantile: float = 0.99
    check_foreign: bool = True


def run_fit_guard(req: FitGuardRequest) -> DomainGuard:
    """Fit, check, store the guard into the checkpoint, update models.yaml and the card."""
    from models.registry import ModelSpec, build_model

    model = build_model(ModelSpec(req.model_id, req.checkpoint, None, {}))
    n_fit, n_cal = DEFAULT_N.get(req.model_id, (60, 40))
    n_fit, n_cal = req.n_fit or n_fit, req.n_calibration or n_cal
    if req.manifest is not None:
        train, cal, test = manifest_inputs(req.manifest, "train"), manifest_inputs(req.manifest, "val"), []
        source = f"manifest {req.manifest.name}"
    else:
        train = phantom_inputs(req.model_id, req.seed, n_fit)
        cal = phantom_inputs(req.model_id, req.seed + 1, n_cal)
        test = phantom_inputs(req.model_id, req.seed + 2, max(20, n_cal // 2))
        source = f"phantoms, seeds {req.seed}/{req.seed + 1}"
    fit = fit_guard(model, train, cal, quantile=req.quantile, source=source)
    figures = dict(fit.guard.calibration)
    if test:
        s = fit.guard.score_features(features_of(model, test))
        figures.update(test_flagged=round(float(np.mean(s > fit.guard.threshold)), 4), n_test=len(s))
    if req.check_foreign:
        flagged, refused, total = foreign_flagged(fit.guard, model, foreign_datasets())
        figures["foreign"] = {"flagged": flagged, "refused": refused, "total": total}
    guard = DomainGuard(fit.guard.mean, fit.guard.precision, fit.guard.threshold, fit.guard.quantile, figures)
    old_sha = sha256_of(req.checkpoint)
    sha = store_guard(req.checkpoint, guard)
    if req.models_yaml is not None:
        update_models_yaml(req.models_yaml, req.model_id, sha)
    if req.card_dir is not None:
        write_guard_card(req.card_dir, guard.summary())
        for name in ("card.md", "card.yaml"):  # the card names the weights it describes by SHA-256
            f = req.card_dir / name
            if f.is_file():
                f.write_text(f.read_text().replace(old_sha, sha))
    return guard
