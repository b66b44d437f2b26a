"""Evaluation reports as the studies print them: metrics.json, report.md and PNG plots.

Every number is computed once into ``summary`` (key -> value, CI, method), written to
metrics.json, and formatted from that same dict into report.md, so the two cannot disagree.
Published figures sit beside ours under the same keys (``auc``, ``sensitivity``,
``youden.specificity``, ``auc.<class>``, ``ncc``, ``map`` ...). Plots use matplotlib's object API
(``Figure``, Agg canvas): no pyplot, no global backend switch, safe in threads and tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from train.common import metrics as M

Task = Literal["binary", "multiclass", "ordinal"]
PublishedInput = float | str | Sequence[float]


@dataclass(frozen=True)
class Report:
    """What an evaluation wrote: its folder, the metrics.json content and every file."""

    out_dir: Path
    metrics: dict[str, Any]
    files: tuple[Path, ...]

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        return dict(self.metrics["summary"])


# ---------------------------------------------------------------------------------------------
# shared pieces


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy to Python, NaN/inf to null, tuples to lists."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(float(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


def normalise_published(published: Mapping[str, PublishedInput] | None) -> dict[str, dict[str, Any]]:
    """Published figures as {key: {value, ci_low, ci_high, text}}: a number, a (value, low, high)
    triple, or free text such as ``"0.89 (0.85-0.93)"`` (kept as text, value null)."""
    out: dict[str, dict[str, Any]] = {}
    for key, v in (published or {}).items():
        if isinstance(v, str):
            out[key] = {"value": None, "ci_low": None, "ci_high": None, "text": v}
        elif isinstance(v, (int, float, np.floating, np.integer)):
            out[key] = {"value": float(v), "ci_low": None, "ci_high": None, "text": f"{float(v):.3f}"}
        else:
            vals = [float(x) for x in v]
            if len(vals) != 3:
                raise ValueError(f"published[{key!r}] must be a number, text or (value, low, high)")
            text = f"{vals[0]:.3f} ({vals[1]:.3f}–{vals[2]:.3f})"
            out[key] = {"value": vals[0], "ci_low": vals[1], "ci_high": vals[2], "text": text}
    return out


def fmt(x: float | None) -> str:
    """How every number appears in Markdown: three decimals, an em dash when missing."""
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def _row(
    label: str, est: M.Estimate | M.AucResult | float, method: str = "", sd: float | None = None
) -> dict[str, Any]:
    if isinstance(est, M.AucResult):
        est = est.estimate()
    if isinstance(est, M.Estimate):
        row: dict[str, Any] = {"label": label, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
               "method": method or est.method}
    else:
        row = {"label": label, "value": float(est), "ci_low": None, "ci_high": None, "method": method}
    if sd is not None:
        row["sd"] = sd
    return {k: (_num(v) if k in ("value", "ci_low", "ci_high", "sd") else v) for k, v in row.items()}


def metrics_table(summary: Mapping[str, Mapping[str, Any]], published: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown rows: metric, key, ours, 95% CI, published (the published-only keys last)."""
    lines = ["| Metric | Key | Ours | 95% CI | Published |", "|---|---|---|---|---|"]
    for key, r in summary.items():
        ours = fmt(r["value"]) + (f" ± {fmt(r['sd'])}" if r.get("sd") is not None else "")
        ci = f"{fmt(r['ci_low'])}–{fmt(r['ci_high'])}" if r.get("ci_low") is not None else "—"
        pub = published.get(key, {}).get("text", "—")
        lines.append(f"| {r['label']} | `{key}` | {ours} | {ci} | {pub} |")
    for key, p in published.items():
        if key not in summary:
            lines.append(f"| (published only) | `{key}` | — | — | {p['text']} |")
    return lines


def _save(fig: Figure, path: Path, files: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    files.append(path)


def _finish(
    out: Path, payload: dict[str, Any], md: list[str], files: list[Path], extra: Mapping[str, Any] | None
) -> Report:
    if extra:
        md += ["", "## Notes", ""] + [f"- **{k}**: {v}" for k, v in extra.items()]
    images = [f for f in files if f.suffix == ".png"]
    if images:
        md += ["", "## Plots", ""] + [f"![{f.stem}]({f.name})" for f in images]
    payload["extra"] = dict(extra or {})
    payload["plots"] = [f.name for f in images]
    payload = _clean(payload)
    (out / "metrics.json").write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    (out / "report.md").write_text("\n".join(md) + "\n")
    return Report(out, payload, (*files, out / "metrics.json", out / "report.md"))


def _header(title: str, facts: Sequence[str]) -> list[str]:
    return [f"# {title}", "", *[f"- {f}" for f in facts], ""]


# ---------------------------------------------------------------------------------------------
# classification


def _roc_band(
    y: npt.NDArray[np.int64], s: npt.NDArray[np.float64], n_boot: int, seed: int, confidence: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Pointwise percentile bootstrap band of sensitivity over a grid of 1 - specificity."""
    grid = np.linspace(0.0, 1.0, 101)
    curves = []
    for idx in M.stratified_bootstrap_indices(y, n_boot, seed):
        fpr, tpr, _ = M.roc_curve(y[idx], s[idx])
        curves.append(np.interp(grid, fpr, tpr))
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(np.array(curves), [tail, 100 - tail], axis=0)
    return grid, lo, hi


def _plot_confusion(cm: npt.NDArray[np.int64], names: Sequence[str], title: str, path: Path, files: list[Path]) -> None:
    fig = Figure(figsize=(1.2 * len(names) + 2.5, 1.0 * len(names) + 2.2))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path, files)


def _plot_calibration(bins: M.CalibrationBins, xlabel: str, path: Path, files: list[Path]) -> None:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ok = bins.counts > 0
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.plot(bins.mean_predicted[ok], bins.fraction_positive[ok], marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("observed fraction")
    ax.set_title(f"Calibration (ECE {bins.ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _save(fig, path, files)


_PRETTY = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
           "precision": "Precision (PPV)", "npv": "NPV", "f1": "F1"}


def _binary_section(
    y: npt.NDArray[np.int64], s: npt.NDArray[np.float64], threshold: float, n_boot: int, seed: int,
    confidence: float, names: Sequence[str], out: Path, files: list[Path],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    auc = M.roc_auc_delong(y, s, confidence)
    summary["auc"] = _row("ROC AUC", auc)
    ap = M.bootstrap_ci(lambda i: M.average_precision(y[i], s[i]), y, n_boot=n_boot, seed=seed, confidence=confidence)
    summary["pr_auc"] = _row("PR AUC (average precision)", ap)
    at = M.threshold_metrics(y, s, threshold, n_boot=n_boot, seed=seed, confidence=confidence)
    yd = M.youden_metrics(y, s, n_boot=n_boot, seed=seed, confidence=confidence)
    for prefix, tm, where in (("", at, f"at {threshold:g}"), ("youden.", yd, "at Youden")):
        for name in M.THRESHOLD_METRICS:
            summary[prefix + name] = _row(f"{_PRETTY[name]} {where}", tm.metrics[name])
    summary["youden.threshold"] = _row("Youden threshold", yd.threshold)
    details: dict[str, Any] = {
        "auc_delong": {"auc": auc.auc, "variance": auc.variance, "se": auc.se},
        "counts": {"at_threshold": at.counts, "at_youden": yd.counts},
    }
    in_unit = bool(s.min() >= 0.0 and s.max() <= 1.0)
    if in_unit:
        summary["brier"] = _row("Brier score", M.brier_score(y, s))
        cal = M.calibration_curve(y, s)
        summary["ece"] = _row("Expected calibration error", cal.ece)
        details["calibration"] = {"edges": cal.edges, "mean_predicted": cal.mean_predicted,
                                  "fraction_positive": cal.fraction_positive, "counts": cal.counts}
        _plot_calibration(cal, "predicted probability", out / "calibration.png", files)
    cm = M.confusion_matrix(y, (s >= threshold).astype(np.int64), labels=[0, 1])
    details["confusion_matrix"] = {"labels": list(names), "threshold": threshold, "matrix": cm}

    fpr, tpr, _ = M.roc_curve(y, s)
    grid, lo, hi = _roc_band(y, s, min(n_boot, 300), seed, confidence)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.fill_between(grid, lo, hi, alpha=0.25, label=f"{confidence:.0%} bootstrap band")
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc.auc:.3f} ({auc.ci_low:.3f}–{auc.ci_high:.3f}, DeLong)")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    se, sp = yd.metrics["sensitivity"].value, yd.metrics["specificity"].value
    ax.plot([1 - sp], [se], "o", color="black", label=f"Youden point (t={yd.threshold:.3g})")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out / "roc.png", files)

    prec, rec, _ = M.precision_recall_curve(y, s)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.step(np.r_[0.0, rec], np.r_[prec[0], prec], where="post", lw=2, label=f"AP {ap.value:.3f}")
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, out / "pr.png", files)
    _plot_confusion(cm, names, f"Confusion at {threshold:g}", out / "confusion.png", files)
    return summary, details


def _multiclass_section(
    y: npt.NDArray[np.int64], p: npt.NDArray[np.float64], ordinal: bool, n_boot: int, seed: int,
    confidence: float, names: Sequence[str], out: Path, files: list[Path],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], npt.NDArray[np.int64]]:
    summary: dict[str, dict[str, Any]] = {}
    k = p.shape[1]
    ovr = M.one_vs_rest_auc(y, p, confidence)
    for name, r in zip(names, ovr, strict=True):
        if r is not None:
            summary[f"auc.{name}"] = _row(f"ROC AUC, {name} vs rest", r)
    present = [c for c in range(k) if ovr[c] is not None]

    def macro(i: npt.NDArray[np.int64]) -> float:
        vals = [M.roc_auc_delong(y[i] == c, p[i, c]).auc for c in present]
        return float(np.mean(vals))

    summary["auc.macro"] = _row("ROC AUC, macro one-vs-rest",
                                M.bootstrap_ci(macro, y, n_boot=n_boot, seed=seed, confidence=confidence))
    pred = np.argmax(p, axis=1).astype(np.int64)
    summary["accuracy"] = _row("Accuracy (argmax)", M.bootstrap_ci(
        lambda i: float(np.mean(pred[i] == y[i])), y, n_boot=n_boot, seed=seed, confidence=confidence))
    kinds: tuple[Literal["linear", "quadratic"] | None, ...] = ("linear", "quadratic") if ordinal else (None,)
    for w in kinds:
        key = f"kappa.{w}" if w else "kappa"

        def kap(i: npt.NDArray[np.int64], w: Literal["linear", "quadratic"] | None = w) -> float:
            return M.cohen_kappa(y[i], pred[i], w, labels=list(range(k)))

        summary[key] = _row(f"Cohen's kappa{', ' + w + ' weights' if w else ''}, model vs truth",
                            M.bootstrap_ci(kap, y, n_boot=n_boot, seed=seed, confidence=confidence))
    if ordinal:
        expected = p @ np.arange(k, dtype=np.float64)
        for g, r in zip(names[1:], M.cumulative_auc(y, expected, k, confidence), strict=True):
            if r is not None:
                summary[f"auc.ge_{g}"] = _row(f"ROC AUC, grade ≥ {g} (expected grade)", r)
    for c, name in enumerate(names):
        yc = (y == c).astype(np.int64)
        if 0 < yc.sum() < yc.size:
            tm = M.threshold_metrics(yc, (pred == c).astype(np.float64), 0.5, n_boot=n_boot, seed=seed,
                                     confidence=confidence)
            for metric in ("sensitivity", "specificity", "precision", "f1"):
                summary[f"{metric}.{name}"] = _row(f"{_PRETTY[metric]}, {name}", tm.metrics[metric])
    cm = M.confusion_matrix(y, pred, labels=list(range(k)))
    conf = p.max(axis=1)
    cal = M.calibration_curve((pred == y).astype(np.int64), conf)
    summary["ece"] = _row("Expected calibration error (top class)", cal.ece)
    details: dict[str, Any] = {
        "confusion_matrix": {"labels": list(names), "matrix": cm},
        "calibration_top_class": {"edges": cal.edges, "mean_predicted": cal.mean_predicted,
                                  "fraction_positive": cal.fraction_positive, "counts": cal.counts},
    }

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for c, name in enumerate(names):
        auc_c = ovr[c]
        if auc_c is not None:
            fpr, tpr, _ = M.roc_curve(y == c, p[:, c])
            ax.plot(fpr, tpr, lw=1.5, label=f"{name}: {auc_c.auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out / "roc.png", files)

    fig = Figure(figsize=(1.0 * k + 3, 4))
    ax = fig.subplots()
    vals = [r.auc if r else np.nan for r in ovr]
    err = np.array([[r.auc - r.ci_low, r.ci_high - r.auc] if r else [0.0, 0.0] for r in ovr]).T
    ax.bar(range(k), vals, yerr=err, capsize=4, color="tab:blue")
    ax.set_xticks(range(k), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ROC AUC (DeLong 95% CI)")
    ax.set_title("AUC per grade, one vs rest")
    _save(fig, out / "per_grade_auc.png", files)
    _plot_confusion(cm, names, "Confusion (argmax)", out / "confusion.png", files)
    _plot_calibration(cal, "top-class probability", out / "calibration.png", files)
    return summary, details, pred


def _reader_section(
    task: Task, y: npt.NDArray[np.int64], model_score: npt.NDArray[np.float64], model_pred: npt.NDArray[np.int64],
    readers: npt.NDArray[np.float64], reader_names: Sequence[str], n_classes: int, confidence: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
    """Model against each reader and the readers among themselves."""
    summary: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    md = ["", "## Readers", ""]
    if task == "binary":
        md += ["| Reader | Model − reader AUC | DeLong z | p |", "|---|---|---|---|"]
        for j, name in enumerate(reader_names):
            r = M.roc_auc_delong(y, readers[:, j], confidence)
            t = M.delong_test(y, model_score, readers[:, j])
            summary[f"reader.{name}.auc"] = _row(f"ROC AUC, {name}", r)
            details[name] = {"auc": r.auc, "delong_vs_model": {"difference": t.difference, "z": t.z, "p": t.p}}
            md.append(f"| {name} | {fmt(t.difference)} | {fmt(t.z)} | {fmt(t.p)} |")
    else:
        grades = np.rint(readers).astype(np.int64)
        md += ["| Reader | Accuracy vs truth | κw (quadratic) vs truth | κw (quadratic) vs model |",
               "|---|---|---|---|"]
        labels = list(range(n_classes))
        for j, name in enumerate(reader_names):
            acc = float(np.mean(grades[:, j] == y))
            k_t = M.cohen_kappa(grades[:, j], y, "quadratic", labels)
            k_m = M.cohen_kappa(grades[:, j], model_pred, "quadratic", labels)
            summary[f"reader.{name}.kappa_quadratic_vs_model"] = _row(f"κw quadratic, model vs {name}", k_m)
            details[name] = {"accuracy": acc, "kappa_quadratic_vs_truth": k_t, "kappa_quadratic_vs_model": k_m}
            md.append(f"| {name} | {fmt(acc)} | {fmt(k_t)} | {fmt(k_m)} |")
    if readers.shape[1] >= 2:
        ic = M.icc(readers, confidence)
        summary["readers.icc2_1"] = _row("ICC(2,1) between readers", ic.icc2_1)
        summary["readers.icc3_1"] = _row("ICC(3,1) between readers", ic.icc3_1)
        if np.allclose(readers, np.rint(readers)):
            counts = M.category_counts(np.rint(readers).astype(np.int64))
            summary["readers.fleiss_kappa"] = _row("Fleiss' kappa between readers", M.fleiss_kappa(counts))
    return summary, details, md


def write_report(
    out_dir: str | Path,
    *,
    task: Task,
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike | None = None,
    probabilities: npt.ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    published: Mapping[str, PublishedInput] | None = None,
    readers: npt.ArrayLike | None = None,
    reader_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    title: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Report:
    """Evaluate a classifier the way the studies report it and write metrics.json, report.md
    and PNGs into ``out_dir``. Binary: ``y_score`` (or two-column ``probabilities``), AUC with
    DeLong CI, PR AUC, threshold and Youden metrics with bootstrap CIs, calibration. Multi-class
    and ordinal: ``probabilities`` (n, K), per-class one-vs-rest AUCs, argmax accuracy, kappa
    (linear and quadratic for ordinal), cumulative AUCs for ordinal. ``readers`` (n, R) adds
    model-vs-reader comparisons (DeLong tests or weighted kappa) and inter-reader ICC/Fleiss."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_true).ravel().astype(np.int64)
    files: list[Path] = []
    if task == "binary":
        if y_score is None:
            if probabilities is None:
                raise ValueError("a binary report needs y_score or probabilities")
            pr = np.asarray(probabilities, dtype=np.float64)
            y_score = pr[:, 1] if pr.ndim == 2 else pr
        s = np.asarray(y_score, dtype=np.float64).ravel()
        names = list(class_names or ("negative", "positive"))
        summary, details = _binary_section(y, s, threshold, n_boot, seed, confidence, names, out, files)
        model_pred = (s >= threshold).astype(np.int64)
        facts = [f"cases: {y.size} ({int(y.sum())} {names[1]}, {int((y == 0).sum())} {names[0]})",
                 f"threshold: {threshold:g} (score ≥ threshold is {names[1]})"]
    elif task in ("multiclass", "ordinal"):
        if probabilities is None:
            raise ValueError(f"a {task} report needs probabilities (n_cases, n_classes)")
        p = np.asarray(probabilities, dtype=np.float64)
        names = list(class_names or [str(c) for c in range(p.shape[1])])
        if len(names) != p.shape[1]:
            raise ValueError(f"{len(names)} class names for {p.shape[1]} probability columns")
        summary, details, model_pred = _multiclass_section(
            y, p, task == "ordinal", n_boot, seed, confidence, names, out, files)
        s = p @ np.arange(p.shape[1], dtype=np.float64)
        counts = np.bincount(y, minlength=len(names))
        facts = [f"cases: {y.size} (" + ", ".join(f"{n}: {c}" for n, c in zip(names, counts, strict=True)) + ")"]
    else:
        raise ValueError(f"task must be binary, multiclass or ordinal, not {task!r}")
    facts.append(f"confidence intervals: {confidence:.0%}; bootstrap n={n_boot}, seed={seed}")
    pub = normalise_published(published)
    rs: dict[str, dict[str, Any]] = {}
    rmd: list[str] = []
    if readers is not None:
        r = np.asarray(readers, dtype=np.float64)
        r = r[:, None] if r.ndim == 1 else r
        rnames = list(reader_names or [f"reader{j + 1}" for j in range(r.shape[1])])
        rs, details["readers"], rmd = _reader_section(task, y, s, model_pred, r, rnames, len(names), confidence)
        rmd += ["", "### Readers and agreement", "", *metrics_table(rs, {k: v for k, v in pub.items() if k in rs})]
    md = _header(title or f"Evaluation report ({task})", facts)
    md += ["## Metrics", "", *metrics_table(summary, {k: v for k, v in pub.items() if k not in rs})]
    cm = details["confusion_matrix"]
    md += ["", "## Confusion matrix (rows true, columns predicted)", "",
           "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    md += [f"| **{n}** | " + " | ".join(str(v) for v in row) + " |"
           for n, row in zip(names, np.asarray(cm["matrix"]).tolist(), strict=True)]
    md += rmd
    summary.update(rs)
    payload = {"task": task, "title": title, "n_cases": int(y.size), "class_names": names,
               "threshold": threshold if task == "binary" else None, "summary": summary,
               "details": details, "published": pub}
    return _finish(out, payload, md, files, extra)


# ---------------------------------------------------------------------------------------------
# image-to-image and detection


def write_generation_report(
    out_dir: str | Path,
    ncc_values: npt.ArrayLike,
    ssim_values: npt.ArrayLike,
    published: Mapping[str, PublishedInput] | None = None,
    examples: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]] = (),
    *,
    extra: Mapping[str, Any] | None = None,
    title: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Report:
    """Report for generated images: NCC and SSIM as mean ± SD (the elastography study's form),
    with a bootstrap CI of each mean, a histogram, and a grid of (input, generated, real)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    summary: dict[str, dict[str, Any]] = {}
    series = {"ncc": np.asarray(ncc_values, dtype=np.float64).ravel(),
              "ssim": np.asarray(ssim_values, dtype=np.float64).ravel()}
    for key, v in series.items():
        v = v[np.isfinite(v)]
        mean, sd = M.mean_sd(v)
        def mean_of(i: np.ndarray, v: np.ndarray = v) -> float:
            return float(v[i].mean())

        est = M.bootstrap_ci(mean_of, np.zeros(v.size), n_boot=n_boot, seed=seed, confidence=confidence)
        summary[key] = _row(f"{key.upper()} (mean ± SD)", M.Estimate(mean, est.ci_low, est.ci_high, est.method), sd=sd)
        summary[f"{key}.median"] = _row(f"{key.upper()} median", float(np.median(v)))
    fig = Figure(figsize=(9, 3.5))
    for ax, (key, v) in zip(fig.subplots(1, 2), series.items(), strict=True):
        ax.hist(v[np.isfinite(v)], bins=20, range=(min(0.0, float(np.nanmin(v))), 1.0), color="tab:blue")
        ax.axvline(summary[key]["value"], color="black", ls="--", lw=1)
        ax.set_xlabel(key.upper())
        ax.set_ylabel("images")
    _save(fig, out / "similarity_hist.png", files)
    if examples:
        fig = Figure(figsize=(7.5, 2.5 * len(examples)))
        axes = np.atleast_2d(fig.subplots(len(examples), 3))
        for row, (inp, gen, real) in zip(axes, examples, strict=True):
            for ax, img, name in zip(row, (inp, gen, real), ("input", "generated", "real"), strict=True):
                ax.imshow(np.asarray(img), cmap="gray" if np.asarray(img).ndim == 2 else None)
                ax.set_title(name, fontsize=9)
                ax.axis("off")
            row[1].set_title(f"generated (NCC {M.ncc(gen, real):.2f})", fontsize=9)
        _save(fig, out / "examples.png", files)
    pub = normalise_published(published)
    md = _header(title or "Image generation report", [f"image pairs: {series['ncc'].size}",
                 f"confidence intervals of the mean: {confidence:.0%} bootstrap, n={n_boot}, seed={seed}"])
    md += ["## Metrics", "", *metrics_table(summary, pub)]
    payload = {"task": "generation", "title": title, "n_cases": int(series["ncc"].size), "summary": summary,
               "details": {"ncc": series["ncc"], "ssim": series["ssim"]}, "published": pub}
    return _finish(out, payload, md, files, extra)


def write_detection_report(
    out_dir: str | Path,
    *,
    detections: Sequence[M.Box],
    ground_truths: Sequence[M.Box],
    class_names: Sequence[str] | None = None,
    iou_threshold: float = 0.5,
    published: Mapping[str, PublishedInput] | None = None,
    extra: Mapping[str, Any] | None = None,
    title: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> Report:
    """Report for a detector: AP per class and mAP at the IoU threshold (VOC all-point), with
    percentile bootstrap CIs over images, a bar chart and per-class PR curves."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    res = M.detection_ap(detections, ground_truths, iou_threshold)
    names = list(class_names or res.per_class.keys())
    images = sorted({b.image_id for b in ground_truths} | {d.image_id for d in detections})
    by_img: dict[str, tuple[list[M.Box], list[M.Box]]] = {i: ([], []) for i in images}
    for d in detections:
        by_img[d.image_id][0].append(d)
    for g in ground_truths:
        by_img[g.image_id][1].append(g)
    rng = np.random.default_rng(seed)
    boot: list[dict[str, float]] = []
    for _ in range(n_boot):
        dets: list[M.Box] = []
        gts: list[M.Box] = []
        for j, i in enumerate(rng.integers(0, len(images), len(images))):
            d0, g0 = by_img[images[i]]
            dets += [M.Box(f"{j}", b.label, b.x1, b.y1, b.x2, b.y2, b.score) for b in d0]
            gts += [M.Box(f"{j}", b.label, b.x1, b.y1, b.x2, b.y2) for b in g0]
        r = M.detection_ap(dets, gts, iou_threshold)
        boot.append({**r.per_class, "__map__": r.mean_ap})
    tail = 100 * (1 - confidence) / 2
    method = f"percentile bootstrap over images, n={n_boot}, seed={seed}"

    def ci(key: str) -> tuple[float, float]:
        vals = np.array([b.get(key, np.nan) for b in boot], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            return float("nan"), float("nan")
        lo, hi = np.percentile(vals, [tail, 100 - tail])
        return float(lo), float(hi)

    map_est = M.Estimate(res.mean_ap, *ci("__map__"), method)
    summary: dict[str, dict[str, Any]] = {"map": _row(f"mAP@{iou_threshold:g}", map_est)}
    for n in names:
        if n in res.per_class and math.isfinite(res.per_class[n]):
            summary[f"ap.{n}"] = _row(f"AP@{iou_threshold:g}, {n}", M.Estimate(res.per_class[n], *ci(n), method))
    fig = Figure(figsize=(1.0 * len(names) + 3, 4))
    ax = fig.subplots()
    ax.bar(range(len(names)), [res.per_class.get(n, np.nan) for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"AP at IoU {iou_threshold:g}")
    ax.set_title(f"mAP {res.mean_ap:.3f}")
    _save(fig, out / "ap_per_class.png", files)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for n in names:
        rec, prec = res.curves.get(n, (np.zeros(0), np.zeros(0)))
        if rec.size:
            ax.plot(rec, prec, lw=1.5, label=f"{n}: {res.per_class[n]:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall per class")
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, out / "pr_detection.png", files)
    pub = normalise_published(published)
    md = _header(title or "Detection report", [
        f"images: {len(images)}; ground-truth boxes: {len(ground_truths)}; detections: {len(detections)}",
        f"match rule: IoU ≥ {iou_threshold:g}, VOC all-point interpolation", method])
    md += ["## Metrics", "", *metrics_table(summary, pub)]
    payload = {"task": "detection", "title": title, "n_cases": len(images), "summary": summary,
               "details": {"n_ground_truth": res.n_ground_truth, "iou_threshold": iou_threshold},
               "published": pub}
    return _finish(out, payload, md, files, extra)
