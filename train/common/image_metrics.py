"""Image-to-image and detection metrics: NCC and SSIM as the elastography study reports them,
IoU and average precision at an IoU threshold for joint detection. Pure numpy/scipy.

Split from `train.common.metrics` (which re-exports these names) to keep each module small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float64]


# ---------------------------------------------------------------------------------------------
# Image-to-image: NCC and SSIM


def ncc(a: npt.ArrayLike, b: npt.ArrayLike, mask: npt.ArrayLike | None = None) -> float:
    """Zero-mean normalised cross-correlation, sum((a-mean a)(b-mean b)) / sqrt(sum(a-mean a)^2
    sum(b-mean b)^2), in [-1, 1]; the elastography study's similarity of a generated map to the
    acquired one (Pearson's r over pixels). NaN when either image is constant."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        x, y = x[m], y[m]
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return float("nan") if denom == 0.0 else float(np.sum(x * y) / denom)


def mean_sd(values: npt.ArrayLike) -> tuple[float, float]:
    """Mean and sample SD (ddof=1) of finite values, as the studies report ``mean ± sd``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def ncc_summary(pairs: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]]) -> tuple[float, float]:
    """Mean and SD of NCC over (generated, real) pairs."""
    return mean_sd([ncc(g, r) for g, r in pairs])


def ssim(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    data_range: float | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), population
    covariances and the border of half a window dropped, matching scikit-image's
    ``structural_similarity(gaussian_weights=True)``. ``data_range`` defaults to the joint range."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)
    if min(x.shape) < 2 * pad + 1:
        raise ValueError(f"images must be at least {2 * pad + 1} pixels on every side")
    if data_range is None:
        data_range = float(max(x.max(), y.max()) - min(x.min(), y.min())) or 1.0
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def blur(z: FloatArray) -> FloatArray:
        return np.asarray(ndimage.gaussian_filter(z, sigma=sigma, truncate=truncate, mode="reflect"))

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[tuple(slice(pad, -pad) for _ in s.shape)].mean())


# ---------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (x1, y1) top-left to (x2, y2) bottom-right, continuous coordinates;
    ground truths leave ``score`` at 1."""

    image_id: str
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0


def iou(a: Box | Sequence[float], b: Box | Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when they do not overlap."""
    ax1, ay1, ax2, ay2 = (a.x1, a.y1, a.x2, a.y2) if isinstance(a, Box) else tuple(a)
    bx1, by1, bx2, by2 = (b.x1, b.y1, b.x2, b.y2) if isinstance(b, Box) else tuple(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class DetectionAP:
    """AP per class at one IoU threshold, their mean over classes with ground truth, and the
    PR points per class (for plotting)."""

    iou_threshold: float
    per_class: dict[str, float]
    n_ground_truth: dict[str, int]
    curves: dict[str, tuple[FloatArray, FloatArray]]

    @property
    def mean_ap(self) -> float:
        vals = [v for v in self.per_class.values() if np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")


def voc_ap(recall: npt.ArrayLike, precision: npt.ArrayLike) -> float:
    """Area under the precision envelope, all-point interpolation (PASCAL VOC 2010+)."""
    mrec = np.r_[0.0, np.asarray(recall, dtype=np.float64), 1.0]
    mpre = np.r_[0.0, np.asarray(precision, dtype=np.float64), 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def detection_ap(
    detections: Sequence[Box], ground_truths: Sequence[Box], iou_threshold: float = 0.5
) -> DetectionAP:
    """Per-class average precision: detections by descending score, each compared with the
    best-overlapping ground truth of its image and class: a true positive when IoU >= threshold
    and that box is not yet taken, else a false positive (duplicates count against); AP by VOC
    all-point interpolation (Everingham et al. 2010). A class with ground truth and no
    detections scores 0; one with no ground truth is NaN and left out of mAP."""
    classes = sorted({b.label for b in ground_truths} | {d.label for d in detections})
    per_class: dict[str, float] = {}
    n_gt: dict[str, int] = {}
    curves: dict[str, tuple[FloatArray, FloatArray]] = {}
    for cls in classes:
        gts: dict[str, list[Box]] = {}
        for g in ground_truths:
            if g.label == cls:
                gts.setdefault(g.image_id, []).append(g)
        used = {img: np.zeros(len(bs), dtype=bool) for img, bs in gts.items()}
        n_gt[cls] = sum(len(bs) for bs in gts.values())
        dets = sorted((d for d in detections if d.label == cls), key=lambda d: -d.score)
        tp = np.zeros(len(dets))
        for i, d in enumerate(dets):
            cands = gts.get(d.image_id, [])
            if not cands:
                continue
            ious = np.array([iou(d, g) for g in cands])
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold and not used[d.image_id][best]:
                used[d.image_id][best] = True
                tp[i] = 1.0
        if n_gt[cls] == 0:
            per_class[cls] = float("nan")
            curves[cls] = (np.zeros(0), np.zeros(0))
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
        rec = ctp / n_gt[cls]
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        per_class[cls] = voc_ap(rec, prec) if dets else 0.0
        curves[cls] = (rec, prec)
    return DetectionAP(float(iou_threshold), per_class, n_gt, curves)
