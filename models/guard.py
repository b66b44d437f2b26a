"""The input-domain guard: is this prepared input like the data the model was trained on?

Every model's wrapper calls `DomainGuard.verdicts` between `prepare` and `predict`, on exactly the
tensors the network will see. The guard describes one input by cheap, model-independent
statistics of that tensor (`input_features`: intensity quantiles, saturation, gradient and
Laplacian energy, radial spectrum bands, a coarse thumbnail of the layout, temporal variation of
a cine) and scores it by its Mahalanobis distance to the training set's feature distribution
(mean and a shrunk precision matrix, fitted by `train.common.guard`). The threshold is a
quantile of the scores of held-out in-domain data, so the share of in-domain inputs refused is
known (about 1 - quantile), and it is stored with its calibration figures.

The guard is serialised into the checkpoint's metadata as plain tensors and numbers
(`to_metadata` / `from_metadata`), so `torch.load(weights_only=True)` reads it. A checkpoint
without a guard gives no verdicts (the findings then say nothing about the domain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.findings import DomainVerdict, ImageRef

#: the feature set's name; a guard fitted on another feature set is refused
FEATURES = "input_stats_v1"
METADATA_KEY = "domain_guard"
_QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
_THUMB = 6  # the layout thumbnail is _THUMB x _THUMB block means
_BANDS = 6  # radial spectrum bands


class GuardError(ValueError):
    """A stored guard that cannot be used (wrong feature set, shapes that do not agree)."""


def _as_channels(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    """(C, H, W) and the mean temporal standard deviation of a cine (0 for a still)."""
    temporal = 0.0
    if x.ndim == 2:
        x = x[np.newaxis]
    elif x.ndim == 4:  # (T, C, H, W) cine
        temporal = float(x.std(axis=0).mean())
        x = x.mean(axis=0)
    if x.ndim != 3:
        raise GuardError(f"cannot describe an input of shape {x.shape}")
    return x, temporal


def _block_means(v: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    rows = np.array_split(np.arange(v.shape[0]), n)
    cols = np.array_split(np.arange(v.shape[1]), n)
    return np.array([[v[np.ix_(r, c)].mean() if len(r) and len(c) else 0.0 for c in cols] for r in rows]).ravel()


def _spectrum_bands(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    power = np.abs(np.fft.fftshift(np.fft.fft2(v - v.mean()))) ** 2
    h, w = v.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / max(h / 2, 1), (xx - w / 2) / max(w / 2, 1))
    edges = np.linspace(0.0, 1.0, _BANDS + 1)
    total = float(power.sum()) + 1e-12
    bands = [float(power[(r >= lo) & (r < hi)].sum()) / total for lo, hi in pairwise(edges)]
    return np.log(np.asarray(bands) + 1e-6)


def input_features(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """One feature vector for one prepared input: (H, W), (C, H, W) or a cine (T, C, H, W)."""
    arr, temporal = _as_channels(np.asarray(x, dtype=np.float64))
    lo, hi = float(arr.min()), float(arr.max())
    span = max(hi - lo, 1e-6)
    out: list[float] = [temporal, lo, hi]
    for v in arr:
        q = np.quantile(v, _QUANTILES)
        gy, gx = np.gradient(v)
        grad = np.hypot(gx, gy)
        lap = (np.roll(v, 1, 0) + np.roll(v, -1, 0) + np.roll(v, 1, 1) + np.roll(v, -1, 1) - 4 * v)[1:-1, 1:-1]
        out += [float(v.mean()), float(v.std()), *map(float, q),
                float(np.mean(v <= lo + 0.01 * span)), float(np.mean(v >= hi - 0.01 * span)),
                float(grad.mean()), float(grad.std()), float(np.log(lap.var() + 1e-9)),
                *map(float, _spectrum_bands(v)), *map(float, _block_means(v, _THUMB))]
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class DomainGuard:
    """A fitted guard: feature mean, precision (inverse shrunk covariance) and the score threshold.

    `calibration` holds the figures the card shows (fit/calibration counts, the quantile, the share
    of held-out in-domain inputs flagged, and any foreign-image check run at fit time).
    """

    mean: npt.NDArray[np.float64]
    precision: npt.NDArray[np.float64]
    threshold: float
    quantile: float
    calibration: Mapping[str, Any] = field(default_factory=dict)
    features: str = FEATURES

    def __post_init__(self) -> None:
        n = self.mean.shape[0]
        if self.mean.ndim != 1 or self.precision.shape != (n, n):
            raise GuardError(f"guard mean {self.mean.shape} and precision {self.precision.shape} do not agree")
        if self.features != FEATURES:
            raise GuardError(f"guard was fitted on feature set {self.features!r}, this code computes {FEATURES!r}")
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise GuardError(f"guard threshold {self.threshold} is not a positive number")

    def score_features(self, feats: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Mahalanobis distance of each row of (N, D) features (non-finite features score inf)."""
        f = np.atleast_2d(np.asarray(feats, dtype=np.float64))
        if f.shape[1] != self.mean.shape[0]:
            return np.full(f.shape[0], np.inf)  # another channel count or layout: not this domain
        d = f - self.mean
        with np.errstate(invalid="ignore", over="ignore"):
            s = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))
        return np.where(np.isfinite(s), s, np.inf)

    def scores(self, inputs: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float64]:
        """The out-of-domain score of each prepared input."""
        if len(inputs) == 0:
            return np.zeros(0)
        rows = [input_features(x) for x in inputs]
        width = self.mean.shape[0]
        return np.array([float(self.score_features(r)[0]) if r.shape[0] == width else np.inf for r in rows])

    def verdicts(self, inputs: Sequence[npt.ArrayLike], refs: Sequence[ImageRef | None]) -> tuple[DomainVerdict, ...]:
        """One verdict per input (in the order of `refs`)."""
        out = []
        for s, ref in zip(self.scores(inputs), refs, strict=True):
            ok = bool(s <= self.threshold)
            shown = f"{s:.1f}" if np.isfinite(s) else "inf"
            out.append(DomainVerdict(ok, float(s) if np.isfinite(s) else float("inf"), self.threshold, ref,
                                     "" if ok else f"input statistics distance {shown} > {self.threshold:.1f}"))
        return tuple(out)

    # -- serialisation (plain tensors and values, for torch.load(weights_only=True)) --------

    def to_metadata(self) -> dict[str, Any]:
        return {"features": self.features, "mean": torch.from_numpy(self.mean.astype(np.float64)),
                "precision": torch.from_numpy(self.precision.astype(np.float64)),
                "threshold": float(self.threshold), "quantile": float(self.quantile),
                "calibration": {k: _plain(v) for k, v in self.calibration.items()}}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> DomainGuard | None:
        """The guard stored in a checkpoint's metadata, or None when it has none."""
        blob = metadata.get(METADATA_KEY)
        if blob is None:
            return None
        if not isinstance(blob, Mapping):
            raise GuardError(f"{METADATA_KEY} in the checkpoint is not a mapping")
        try:
            return cls(mean=_array(blob["mean"]), precision=_array(blob["precision"]),
                       threshold=float(blob["threshold"]), quantile=float(blob["quantile"]),
                       calibration=dict(blob.get("calibration", {})), features=str(blob.get("features", "")))
        except KeyError as exc:
            raise GuardError(f"{METADATA_KEY} lacks {exc}") from exc

    def summary(self) -> dict[str, Any]:
        """The card's figures: feature set, threshold, quantile and the calibration figures."""
        return {"features": self.features, "dimensions": int(self.mean.shape[0]),
                "threshold": round(self.threshold, 3), "quantile": self.quantile,
                **{k: _plain(v) for k, v in self.calibration.items()}}


def _array(v: Any) -> npt.NDArray[np.float64]:
    if isinstance(v, torch.Tensor):
        return v.double().numpy()
    return np.asarray(v, dtype=np.float64)


def _plain(v: Any) -> Any:
    """A value torch.load(weights_only=True) and YAML both take: numbers, strings, lists, dicts."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def guard_verdicts(guard: DomainGuard | None, inputs: Sequence[npt.ArrayLike],
                   refs: Sequence[ImageRef | None]) -> tuple[DomainVerdict, ...]:
    """What a wrapper puts into `Findings.domain`: the guard's verdicts, or () without a guard."""
    if guard is None:
        return ()
    return guard.verdicts(inputs, refs)


__all__ = ["FEATURES", "METADATA_KEY", "DomainGuard", "GuardError", "guard_verdicts", "input_features"]
