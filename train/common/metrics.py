"""Metrics as the published studies report them; numpy, scipy and scikit-learn, no torch, no sidecar.

Conventions: labels are 0/1 (binary) or 0..K-1 (multi-class, ordinal grades); a case is called
positive when ``score >= threshold``; confidence intervals are two-sided 95% unless told; every
resampling takes a seed. Each function names the method it follows in its docstring.

Curves, average precision, the confusion matrix, calibration bins, the Brier score and Cohen's
kappa are scikit-learn's (the same implementation train/common/loops.py uses); DeLong, ICC,
Fleiss' kappa and the stratified bootstrap have no well-kept library equivalent and live here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from sklearn import calibration as skcal, metrics as skm

# Image-to-image and detection metrics live in their own module; their names stay importable here.
from train.common.image_metrics import (
    Box as Box,
    DetectionAP as DetectionAP,
    detection_ap as detection_ap,
    iou as iou,
    mean_sd as mean_sd,
    ncc as ncc,
    ncc_summary as ncc_summary,
    ssim as ssim,
    voc_ap as voc_ap,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Estimate:
    """A point value with its confidence interval and how the interval was made."""

    value: float
    ci_low: float
    ci_high: float
    method: str = ""

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class AucResult:
    """ROC AUC with its DeLong variance and Wald interval (clipped to [0, 1])."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int

    @property
    def se(self) -> float:
        return float(np.sqrt(self.variance))

    def estimate(self) -> Estimate:
        return Estimate(self.auc, self.ci_low, self.ci_high, "DeLong")


@dataclass(frozen=True)
class DelongTest:
    """Two correlated ROC AUCs on the same cases, compared (DeLong et al. 1988)."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p: float


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def _binary(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} cases but y_score has {s.size}")
    if not np.isin(y, (0, 1, True, False)).all():
        raise ValueError("y_true must hold only 0/1 labels")
    yb = y.astype(bool)
    if yb.all() or not yb.any():
        raise ValueError("ROC needs at least one positive and one negative case")
    return yb, s


# ---------------------------------------------------------------------------------------------
# ROC AUC and DeLong


def midrank(x: npt.ArrayLike) -> FloatArray:
    """Ranks 1..n with ties given the mean of the ranks they span (Sun & Xu 2014, Alg. 1)."""
    return np.asarray(stats.rankdata(np.asarray(x, dtype=np.float64), method="average"), dtype=np.float64)


def delong_components(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """AUCs and structural components V10 (per positive) and V01 (per negative) for one or more
    score rows on the same cases, by midranks in O(n log n) (fast DeLong, Sun & Xu 2014).

    ``scores`` is (n_cases,) or (n_models, n_cases); returns (auc[k], v10[k, m], v01[k, n]).
    """
    s2 = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y, _ = _binary(y_true, s2[0])
    x_pos, y_neg = s2[:, y], s2[:, ~y]
    m, n = x_pos.shape[1], y_neg.shape[1]
    aucs, v10s, v01s = [], [], []
    for xp, yn in zip(x_pos, y_neg, strict=True):
        tx, ty, tz = midrank(xp), midrank(yn), midrank(np.concatenate([xp, yn]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v10s.append((tz[:m] - tx) / n)
        v01s.append(1.0 - (tz[m:] - ty) / m)
    return np.array(aucs), np.array(v10s), np.array(v01s)


def _delong_cov(v10: FloatArray, v01: FloatArray) -> FloatArray:
    """S = S10/m + S01/n with sample covariances (DeLong 1988, eq. 4)."""
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return np.asarray(s10 / v10.shape[1] + s01 / v01.shape[1], dtype=np.float64)


def roc_auc_delong(y_true: npt.ArrayLike, y_score: npt.ArrayLike, confidence: float = 0.95) -> AucResult:
    """Binary ROC AUC (Mann-Whitney, ties count one half) with DeLong variance and a Wald CI
    clipped to [0, 1], as pROC's ``ci.auc(method="delong")`` (DeLong 1988; Sun & Xu 2014)."""
    aucs, v10, v01 = delong_components(y_true, y_score)
    var = float(_delong_cov(v10, v01)[0, 0])
    auc = float(aucs[0])
    half = _z(confidence) * float(np.sqrt(max(var, 0.0)))
    lo, hi = max(0.0, auc - half), min(1.0, auc + half)
    return AucResult(auc, var, lo, hi, int(v10.shape[1]), int(v01.shape[1]))


def delong_test(y_true: npt.ArrayLike, scores_a: npt.ArrayLike, scores_b: npt.ArrayLike) -> DelongTest:
    """Two-sided z test of AUC_a = AUC_b for two scores on the same cases, using the DeLong
    covariance of the paired AUCs (DeLong, DeLong & Clarke-Pearson 1988)."""
    aucs, v10, v01 = delong_components(y_true, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]))
    cov = _delong_cov(v10, v01)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        z, p = (0.0, 1.0) if diff == 0.0 else (float(np.copysign(np.inf, diff)), 0.0)
    else:
        z = diff / se
        p = float(2.0 * stats.norm.sf(abs(z)))
    return DelongTest(float(aucs[0]), float(aucs[1]), diff, se, z, p)


def roc_curve(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(fpr, tpr, thresholds) at every distinct score, starting at (0, 0) with threshold +inf:
    scikit-learn's ``roc_curve(drop_intermediate=False)``."""
    y, s = _binary(y_true, y_score)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return np.asarray(fpr, np.float64), np.asarray(tpr, np.float64), np.asarray(thr, np.float64)


def precision_recall_curve(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(precision, recall, thresholds) at every distinct score, highest threshold first:
    scikit-learn's ``precision_recall_curve`` without its closing (1, 0) point, reversed."""
    y, s = _binary(y_true, y_score)
    precision, recall, thr = skm.precision_recall_curve(y, s)
    return (np.asarray(precision[-2::-1], np.float64), np.asarray(recall[-2::-1], np.float64),
            np.asarray(thr[::-1], np.float64))


def average_precision(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """PR AUC as average precision, sum over thresholds of (R_n - R_{n-1}) * P_n, without
    interpolation: scikit-learn's ``average_precision_score``."""
    y, s = _binary(y_true, y_score)
    return float(skm.average_precision_score(y, s))


# ---------------------------------------------------------------------------------------------
# Multi-class and ordinal grades


def one_vs_rest_auc(
    y_true: npt.ArrayLike, probabilities: npt.ArrayLike, confidence: float = 0.95
) -> list[AucResult | None]:
    """Per-class ROC AUC of class k against the rest, scored by column k, with DeLong CIs
    (one-vs-rest, Hand & Till 2001 macro form). None for a class absent (or alone) in y_true."""
    y = np.asarray(y_true).ravel().astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probabilities must be (n_cases, n_classes); got {p.shape} for {y.size} cases")
    out: list[AucResult | None] = []
    for k in range(p.shape[1]):
        yk = y == k
        out.append(roc_auc_delong(yk, p[:, k], confidence) if 0 < yk.sum() < y.size else None)
    return out


def cumulative_auc(
    y_grade: npt.ArrayLike, score: npt.ArrayLike, n_grades: int | None = None, confidence: float = 0.95
) -> list[AucResult | None]:
    """For ordinal grades: AUC of ``grade >= g`` against ``grade < g`` for g = 1..K-1 with one
    ordinal score (e.g. the expected grade), DeLong CIs. None where a side is empty."""
    y = np.asarray(y_grade).ravel().astype(np.int64)
    k = int(n_grades if n_grades is not None else y.max() + 1)
    out: list[AucResult | None] = []
    for g in range(1, k):
        yg = y >= g
        out.append(roc_auc_delong(yg, score, confidence) if 0 < yg.sum() < y.size else None)
    return out


# ---------------------------------------------------------------------------------------------
# Threshold metrics with bootstrap CIs

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")


@dataclass(frozen=True)
class ThresholdMetrics:
    """Metrics at one operating point, with percentile bootstrap CIs; ``counts`` holds tp/fp/tn/fn."""

    threshold: float
    counts: dict[str, int]
    metrics: dict[str, Estimate] = field(default_factory=dict)


def _rates(tp: FloatArray, fp: FloatArray, tn: FloatArray, fn: FloatArray) -> dict[str, FloatArray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + fp + tn + fn),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "precision": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def stratified_bootstrap_indices(y: npt.ArrayLike, n_boot: int, seed: int) -> IntArray:
    """(n_boot, n) case indices resampled with replacement within each label, so every replicate
    keeps the case mix (pROC's stratified bootstrap, Carpenter & Bithell 2000)."""
    labels = np.asarray(y).ravel()
    rng = np.random.default_rng(seed)
    cols = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        cols.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    return np.asarray(np.hstack(cols), dtype=np.int64)


def _percentile(samples: FloatArray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return float(lo), float(hi)


def threshold_metrics(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    threshold: float,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ThresholdMetrics:
    """Accuracy, sensitivity (recall), specificity, precision (PPV), NPV and F1 when
    ``score >= threshold`` is called positive, each with a percentile bootstrap CI
    (Efron & Tibshirani 1993) over cases resampled within each label. NaN where undefined."""
    y, s = _binary(y_true, y_score)
    pred = s >= threshold
    tp, fp = float(np.sum(pred & y)), float(np.sum(pred & ~y))
    tn, fn = float(np.sum(~pred & ~y)), float(np.sum(~pred & y))
    point = _rates(*(np.array([v]) for v in (tp, fp, tn, fn)))
    idx = stratified_bootstrap_indices(y, n_boot, seed)
    yb, pb = y[idx], pred[idx]
    boot = _rates(
        np.sum(pb & yb, axis=1).astype(np.float64),
        np.sum(pb & ~yb, axis=1).astype(np.float64),
        np.sum(~pb & ~yb, axis=1).astype(np.float64),
        np.sum(~pb & yb, axis=1).astype(np.float64),
    )
    method = f"percentile bootstrap, n={n_boot}, seed={seed}"
    metrics = {
        name: Estimate(float(point[name][0]), *_percentile(boot[name], confidence), method)
        for name in THRESHOLD_METRICS
    }
    counts = {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}
    return ThresholdMetrics(float(threshold), counts, metrics)


def youden_threshold(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1 (Youden 1950);
    on ties the highest such threshold. Use with ``score >= threshold``."""
    fpr, tpr, thr = roc_curve(y_true, y_score)
    j = (tpr - fpr)[1:]  # skip the +inf point (nothing called positive)
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0]) + 1  # ties within rounding: highest threshold
    return float(thr[best])


def youden_metrics(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> ThresholdMetrics:
    """Threshold metrics at Youden's point chosen on these cases; the bootstrap keeps that
    threshold fixed, so the CIs describe the operating point, not its selection."""
    thr = youden_threshold(y_true, y_score)
    return threshold_metrics(y_true, y_score, thr, n_boot=n_boot, seed=seed, confidence=confidence)


def bootstrap_ci(
    statistic: Callable[[IntArray], float],
    strata: npt.ArrayLike,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Percentile bootstrap CI of any statistic of case indices, resampling within ``strata``
    (e.g. the true labels). ``statistic(np.arange(n))`` is the point value."""
    n = np.asarray(strata).size
    idx = stratified_bootstrap_indices(strata, n_boot, seed)
    samples = np.array([statistic(row) for row in idx], dtype=np.float64)
    return Estimate(float(statistic(np.arange(n))), *_percentile(samples, confidence),
                    f"percentile bootstrap, n={n_boot}, seed={seed}")


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, labels: Sequence[int] | None = None
) -> IntArray:
    """Counts with true labels on rows and predictions on columns, in the order of ``labels``
    (default: every label seen, sorted): scikit-learn's ``confusion_matrix``."""
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    labs = list(labels) if labels is not None else sorted(set(t.tolist()) | set(p.tolist()))
    return np.asarray(skm.confusion_matrix(t, p, labels=labs), dtype=np.int64)


@dataclass(frozen=True)
class CalibrationBins:
    """Reliability diagram bins: edges, mean predicted probability, observed fraction, counts."""

    edges: FloatArray
    mean_predicted: FloatArray
    fraction_positive: FloatArray
    counts: IntArray

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |observed - predicted| (Naeini 2015)."""
        ok = self.counts > 0
        w = self.counts[ok] / self.counts[ok].sum()
        return float(np.sum(w * np.abs(self.fraction_positive[ok] - self.mean_predicted[ok])))


def calibration_curve(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, n_bins: int = 10, strategy: Literal["uniform", "quantile"] = "uniform"
) -> CalibrationBins:
    """Bins of predicted probability (equal width on [0, 1], or equal count) with the observed
    positive fraction in each: scikit-learn's ``calibration_curve``, which reports the non-empty
    bins only, laid out over all ``n_bins`` with their counts; empty bins give NaN."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    frac, mean_p = skcal.calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    # the bin edges and assignment scikit-learn uses (searchsorted on the inner edges)
    if strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], p, side="left")
    counts = np.bincount(which, minlength=n_bins).astype(np.int64)
    fraction = np.full(n_bins, np.nan)
    mean_predicted = np.full(n_bins, np.nan)
    fraction[counts > 0], mean_predicted[counts > 0] = frac, mean_p
    return CalibrationBins(edges, mean_predicted, fraction, counts)


def brier_score(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> float:
    """Mean squared difference between predicted probability and outcome (Brier 1950):
    scikit-learn's ``brier_score_loss`` with 1 as the positive label."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    return float(skm.brier_score_loss(y, np.asarray(y_prob, dtype=np.float64).ravel(), pos_label=1))


# ---------------------------------------------------------------------------------------------
# Agreement: ICC, Cohen's and Fleiss' kappa


@dataclass(frozen=True)
class IccResult:
    """Single-measure ICCs with F-based 95% CIs (Shrout & Fleiss 1979; McGraw & Wong 1996)."""

    icc1_1: Estimate  # one-way random, absolute agreement
    icc2_1: Estimate  # two-way random, absolute agreement
    icc3_1: Estimate  # two-way mixed, consistency
    n_subjects: int
    n_raters: int


def icc(ratings: npt.ArrayLike, confidence: float = 0.95) -> IccResult:
    """ICC(1,1), ICC(2,1), ICC(3,1) of an n_subjects x n_raters matrix with no missing cells,
    from the two-way ANOVA mean squares, with the F-distribution CIs of McGraw & Wong 1996
    (Satterthwaite degrees of freedom for ICC(2,1))."""
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
        raise ValueError("ratings must be a finite n_subjects x n_raters matrix, both >= 2")
    n, k = x.shape
    gm = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - gm) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - gm) ** 2)
    ss_err = np.sum((x - gm) ** 2) - ss_rows - ss_cols
    msr, msc = ss_rows / (n - 1), ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    msw = (ss_cols + ss_err) / (n * (k - 1))
    q = 1.0 - (1.0 - confidence) / 2.0
    v1 = (msr - msw) / (msr + (k - 1) * msw)
    v2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    v3 = (msr - mse) / (msr + (k - 1) * mse)

    def f_ci(f: float, df1: float, df2: float) -> tuple[float, float]:
        fl, fu = f / stats.f.ppf(q, df1, df2), f * stats.f.ppf(q, df2, df1)
        return float((fl - 1) / (fl + k - 1)), float((fu - 1) / (fu + k - 1))

    with np.errstate(divide="ignore", invalid="ignore"):
        ci1 = f_ci(msr / msw, n - 1, n * (k - 1))
        ci3 = f_ci(msr / mse, n - 1, (n - 1) * (k - 1))
        a = k * v2 / (n * (1 - v2))
        b = 1 + k * v2 * (n - 1) / (n * (1 - v2))
        df = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
        fs, fss = stats.f.ppf(q, n - 1, df), stats.f.ppf(q, df, n - 1)
        denom = k * msc + (k * n - k - n) * mse
        lo2 = n * (msr - fs * mse) / (fs * denom + n * msr)
        hi2 = n * (fss * msr - mse) / (denom + n * fss * msr)
    return IccResult(
        Estimate(float(v1), *ci1, "F, one-way random"),
        Estimate(float(v2), float(lo2), float(hi2), "F, two-way random, Satterthwaite df"),
        Estimate(float(v3), *ci3, "F, two-way mixed"),
        n,
        k,
    )


def cohen_kappa(
    rater_a: npt.ArrayLike,
    rater_b: npt.ArrayLike,
    weights: Literal["linear", "quadratic"] | None = None,
    labels: Sequence[int] | None = None,
) -> float:
    """Cohen's kappa (1960), weighted (1968) with disagreement |i-j| (linear) or (i-j)^2
    (quadratic) over the label positions: scikit-learn's ``cohen_kappa_score``. NaN where
    chance agreement is total (one category only)."""
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    a, b = np.asarray(rater_a).ravel(), np.asarray(rater_b).ravel()
    labs = list(labels) if labels is not None else sorted(set(a.tolist()) | set(b.tolist()))
    if len(labs) < 2:
        return float("nan")
    return float(skm.cohen_kappa_score(a, b, labels=labs, weights=weights))


def category_counts(ratings: npt.ArrayLike, categories: Sequence[int] | None = None) -> IntArray:
    """n_subjects x n_raters category ratings -> n_subjects x n_categories counts for Fleiss."""
    r = np.asarray(ratings)
    cats = list(categories) if categories is not None else sorted(set(r.ravel().tolist()))
    return np.stack([(r == c).sum(axis=1) for c in cats], axis=1).astype(np.int64)


def fleiss_kappa(counts: npt.ArrayLike) -> float:
    """Fleiss' kappa (1971) for n_subjects x n_categories counts, the same number of raters
    per subject: (P_bar - P_e) / (1 - P_e)."""
    c = np.asarray(counts, dtype=np.float64)
    raters = c.sum(axis=1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("every subject needs the same number (>= 2) of ratings")
    n = raters[0]
    p_j = c.sum(axis=0) / c.sum()
    p_i = (np.sum(c**2, axis=1) - n) / (n * (n - 1))
    p_e = float(np.sum(p_j**2))
    return float("nan") if p_e == 1.0 else float((p_i.mean() - p_e) / (1.0 - p_e))

