"""Site-chosen operating points and calibrated probabilities for the binary models.

`python -m train <model> calibrate --manifest M --target sensitivity=0.9` scores one split of the
site's validation manifest through the served model (its own `prepare` and `probabilities`, so the
figures are the served model's), fits a temperature on the logits (temperature scaling, Guo et al.
2017: one parameter, ranks unchanged), picks the threshold that meets the target on the calibrated
probabilities, and gives every figure at that threshold with a stratified bootstrap CI (the
threshold's own CI is the spread of the thresholds chosen on bootstrap resamples). It writes
``temperature``, ``threshold`` and ``operating_point`` into the checkpoint's metadata (serving
reads them there; no threshold is a constant in code), the new SHA-256 into models.yaml, the figures
into the card, and an evaluation report with the calibration plot into --out.

Targets: ``sensitivity=S`` (the highest threshold with sensitivity >= S), ``specificity=S`` (the
lowest with specificity >= S), ``alert_rate=R`` (the lowest with at most R of cases positive),
``youden`` (max sensitivity + specificity - 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from scipy.optimize import minimize_scalar

from models.checkpoint import sha256_of
from train.common import metrics as M

TARGETS = ("sensitivity", "specificity", "alert_rate", "youden")
#: model id -> positive label (the card label whose probability `probabilities` gives)
POSITIVE: dict[str, str] = {"lge_qa": "low_certainty", "gout_mtp1": "abnormal"}


@dataclass(frozen=True)
class Target:
    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        kind, _, value = text.partition("=")
        if kind not in TARGETS:
            raise ValueError(f"target {text!r}: expected one of {', '.join(TARGETS)} (e.g. sensitivity=0.9)")
        if kind == "youden":
            return cls(kind)
        try:
            v = float(value)
        except ValueError as exc:
            raise ValueError(f"target {text!r} needs a value in (0, 1), e.g. {kind}=0.9") from exc
        if not 0.0 < v < 1.0:
            raise ValueError(f"target {text!r}: the value must lie in (0, 1)")
        return cls(kind, v)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"


def choose_threshold(y: npt.ArrayLike, p: npt.ArrayLike, target: Target) -> float:
    """The threshold (positive when p >= threshold) that meets `target` on (y, p)."""
    yy, pp = np.asarray(y).astype(bool), np.asarray(p, dtype=np.float64)
    cands = np.unique(np.concatenate([pp, [1.0 + 1e-9]]))
    pos, neg = max(int(yy.sum()), 1), max(int((~yy).sum()), 1)
    pred = pp[None, :] >= cands[:, None]
    sens = (pred & yy).sum(1) / pos
    spec = (~pred & ~yy).sum(1) / neg
    rate = pred.mean(1)
    if target.kind == "youden":
        return float(cands[int(np.argmax(sens + spec - 1.0))])
    v = float(target.value or 0.0)
    if target.kind == "sensitivity":
        ok = np.flatnonzero(sens >= v)
        return float(cands[ok.max()]) if len(ok) else float(cands[0])
    if target.kind == "specificity":
        ok = np.flatnonzero(spec >= v)
        return float(cands[ok.min()]) if len(ok) else float(cands[-1])
    ok = np.flatnonzero(rate <= v)
    return float(cands[ok.min()]) if len(ok) else float(cands[-1])


def fit_temperature(p: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """The temperature T minimising the log loss of sigmoid(logit(p) / T) on (p, y)."""
    z = _logit(np.asarray(p, dtype=np.float64))
    yy = np.asarray(y, dtype=np.float64)

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_t))), 1e-12, 1 - 1e-12)
        return float(-np.mean(yy * np.log(q) + (1 - yy) * np.log(1 - q)))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded")
    return float(np.exp(res.x))


def _logit(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.asarray(np.log(q / (1 - q)))


def apply_temperature(p: npt.ArrayLike, temperature: float) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-_logit(np.asarray(p, dtype=np.float64)) / temperature)))


def operating_point(y: npt.ArrayLike, p: npt.ArrayLike, target: Target, *, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """The threshold for `target` and the figures at it, each with a 95 % bootstrap CI."""
    yy, pp = np.asarray(y).astype(np.int64), np.asarray(p, dtype=np.float64)
    if yy.min() == yy.max():
        raise ValueError("calibration needs both positive and negative cases")
    threshold = choose_threshold(yy, pp, target)
    tm = M.threshold_metrics(yy, pp, threshold, n_boot=n_boot, seed=seed)
    idx = M.stratified_bootstrap_indices(yy, n_boot, seed)
    boot_t = np.array([choose_threshold(yy[i], pp[i], target) for i in idx])
    boot_rate = np.array([float(np.mean(pp[i] >= threshold)) for i in idx])
    out: dict[str, Any] = {
        "target": str(target), "threshold": round(threshold, 4),
        "threshold_ci": [round(float(v), 4) for v in np.percentile(boot_t, [2.5, 97.5])],
        "alert_rate": round(float(np.mean(pp >= threshold)), 4),
        "alert_rate_ci": [round(float(v), 4) for v in np.percentile(boot_rate, [2.5, 97.5])],
        "n": int(len(yy)), "n_positive": int(yy.sum()), "bootstrap": f"stratified, n={n_boot}, seed={seed}",
    }
    for name in ("sensitivity", "specificity", "precision"):
        est = tm.metrics[name]
        out[name] = round(float(est.value), 4)
        out[f"{name}_ci"] = [round(float(est.ci_low), 4), round(float(est.ci_high), 4)]
    return out


def served_probabilities(model: Any, datasets: Sequence[pydicom.Dataset]) -> npt.NDArray[np.float64]:
    """P(positive) per input through the served path (prepare, backend forward, calibration)."""
    out: list[float] = []
    for ds in datasets:
        out.extend(float(v) for v in np.ravel(model.probabilities(model.prepare([ds]))))
    return np.asarray(out)


def manifest_split(manifest: Path, split: str, positive: str) -> tuple[list[pydicom.Dataset], npt.NDArray[np.int64]]:
    """Datasets and 0/1 labels (label == `positive`) of one split of a manifest."""
    from train.common.manifest import Manifest

    m = Manifest.read(manifest).split(split)
    if len(m) == 0:
        raise ValueError(f"{manifest} has no rows in split {split!r}")
    return [pydicom.dcmread(m.resolve(r)) for r in m], np.array([int(r.label == positive) for r in m])


_BEGIN, _END = "<!-- operating-point:begin -->", "<!-- operating-point:end -->"


def card_section(op: Mapping[str, Any]) -> str:
    def ci(name: str) -> str:
        lo, hi = op.get(f"{name}_ci", [None, None])
        return f"{op.get(name)} (95 % CI {lo}-{hi})"
    lines = [_BEGIN, "## Operating point", "",
             f"Chosen by the site with `python -m train <model> calibrate`, target **{op.get('target')}**, on "
             f"{op.get('n')} validation cases ({op.get('n_positive')} positive) of `{op.get('manifest')}`; "
             f"probabilities temperature-scaled "
             f"(T = {op.get('temperature')}).", "",
             "| figure | value |", "|---|---|",
             f"| threshold | {ci('threshold')} |", f"| sensitivity | {ci('sensitivity')} |",
             f"| specificity | {ci('specificity')} |", f"| precision | {ci('precision')} |",
             f"| alert rate | {ci('alert_rate')} |", _END]
    return "\n".join(lines) + "\n"


def write_card(card_dir: Path, op: Mapping[str, Any], old_sha: str, new_sha: str) -> None:
    import yaml

    y = card_dir / "card.yaml"
    data = yaml.safe_load(y.read_text()) if y.is_file() else {}
    data["operating_point"] = dict(op)
    y.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).replace(old_sha, new_sha))
    md = card_dir / "card.md"
    _put_section(md, card_section(op), old_sha, new_sha)


def _put_section(md: Path, section: str, old_sha: str = "", new_sha: str = "") -> None:
    """Replace card.md's operating-point section (between its markers), or append it."""
    text = md.read_text() if md.is_file() else ""
    if old_sha:
        text = text.replace(old_sha, new_sha)
    if _BEGIN in text and _END in text:
        head, rest = text.split(_BEGIN, 1)
        text = head + section + rest.split(_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text)


#: the models without a site threshold: the decision rule serving applies, and the card metrics that
#: are the figures at that rule (from the card's own evaluation on held-out data)
ARGMAX_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"synovitis_{v}": ("the grade with the highest probability (argmax over EULAR-OMERACT grades 0-3)",
                          ("accuracy", "kappa.quadratic", *(f"{m}.grade_{g}" for g in range(4)
                                                            for m in ("sensitivity", "specificity"))))
       for v in ("sgs", "dgs", "spd", "dpd")},
    "hand_joints": ("per detected joint, the SHS narrowing class and the KL class with the highest probability",
                    ("detection.recall_mean", "ra.grade_accuracy", "ra.kappa_quadratic", "oa.grade_accuracy",
                     "oa.kappa_quadratic")),
    "breast_elastography": ("the Tsukuba score with the highest probability of the model's head; the generated "
                            "elastogram itself is an image and has no threshold", ("ncc", "ssim")),
}


def rule_operating_point(model_id: str, card: Mapping[str, Any]) -> dict[str, Any]:
    """The operating point of an argmax model: its rule and the card's figures at that rule."""
    if model_id not in ARGMAX_RULES:
        raise ValueError(f"{model_id!r} has a site threshold: use calibrate (binary models: {', '.join(POSITIVE)})")
    rule, keys = ARGMAX_RULES[model_id]
    metrics = card.get("metrics") or {}
    figures = {k: {"label": metrics[k].get("label", k), "value": metrics[k].get("value"),
                   "ci": [metrics[k].get("ci_low"), metrics[k].get("ci_high")]} for k in keys if k in metrics}
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"the card of {model_id} lacks the figures {', '.join(missing)}: evaluate and write it first")
    n = (card.get("evaluation") or {}).get("n_cases")
    return {"rule": rule, "threshold": None, "n": n, "figures": figures,
            "source": f"the card's evaluation on {n} held-out cases"}


def rule_card_section(op: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = [_BEGIN, "## Operating point", "",
             f"Decision rule: {op['rule']}. There is no site threshold to move for this model "
             f"(`calibrate` covers the binary models); the figures at this rule are from {op['source']}.", "",
             "| figure | value | 95 % CI |", "|---|---|---|"]
    for f in op["figures"].values():
        lo, hi = f["ci"]
        lines.append(f"| {f['label']} | {fmt(f['value'])} | "
                     + ("—" if lo is None or hi is None else f"{fmt(lo)}–{fmt(hi)}") + " |")
    return "\n".join([*lines, _END]) + "\n"


def write_rule_card(card_dir: Path, model_id: str) -> dict[str, Any]:
    """Write an argmax model's operating-point section into its card (card.md and card.yaml)."""
    import yaml

    y = card_dir / "card.yaml"
    data = yaml.safe_load(y.read_text())
    op = rule_operating_point(model_id, data)
    data["operating_point"] = op
    y.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    _put_section(card_dir / "card.md", rule_card_section(op))
    return op


@dataclass(frozen=True)
class CalibrateRequest:
    model_id: str
    checkpoint: Path
    manifest: Path
    target: Target
    out_dir: Path
    split: str = "val"
    models_yaml: Path | None = None
    card_dir: Path | None = None
    n_boot: int = 1000
    seed: int = 0


def run_calibrate(req: CalibrateRequest) -> dict[str, Any]:
    """Calibrate, choose the operating point, store both in the checkpoint; returns the figures."""
    import torch

    from models.registry import ModelSpec, build_model
    from train.common.guard import update_models_yaml
    from train.common.reports import write_report

    positive = POSITIVE.get(req.model_id)
    if positive is None:
        raise ValueError(f"calibrate covers the binary models ({', '.join(POSITIVE)}), not {req.model_id!r}")
    blob = torch.load(req.checkpoint, map_location="cpu", weights_only=True)
    blob["metadata"].pop("temperature", None)  # score the uncalibrated network
    tmp = req.checkpoint.with_suffix(".uncalibrated.tmp")
    torch.save(blob, tmp)
    try:
        model = build_model(ModelSpec(req.model_id, tmp, None, {}))
    finally:
        tmp.unlink()
    datasets, y = manifest_split(req.manifest, req.split, positive)
    p_raw = served_probabilities(model, datasets)
    temperature = fit_temperature(p_raw, y)
    p = apply_temperature(p_raw, temperature)
    op = operating_point(y, p, req.target, n_boot=req.n_boot, seed=req.seed)
    op.update(temperature=round(temperature, 4), split=req.split, manifest=req.manifest.name,
              brier_before=round(M.brier_score(y, p_raw), 4), brier_after=round(M.brier_score(y, p), 4))
    write_report(req.out_dir, task="binary", y_true=y, y_score=p, class_names=list(model.card.labels),
                 threshold=float(op["threshold"]), title=f"{req.model_id} calibrated, target {req.target}",
                 extra={"temperature": temperature, "checkpoint": str(req.checkpoint)}, seed=req.seed)
    old_sha = sha256_of(req.checkpoint)
    blob["metadata"].update(temperature=float(temperature), threshold=float(op["threshold"]), operating_point=op)
    out = req.checkpoint.with_suffix(req.checkpoint.suffix + ".tmp")
    torch.save(blob, out)
    out.replace(req.checkpoint)
    new_sha = sha256_of(req.checkpoint)
    if req.models_yaml is not None:
        update_models_yaml(req.models_yaml, req.model_id, new_sha)
    if req.card_dir is not None:
        write_card(req.card_dir, op, old_sha, new_sha)
    return op


__all__ = ["ARGMAX_RULES", "POSITIVE", "TARGETS", "CalibrateRequest", "Target", "apply_temperature", "choose_threshold",
           "fit_temperature", "operating_point", "rule_operating_point", "run_calibrate", "served_probabilities",
           "write_rule_card"]
