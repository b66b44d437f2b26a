"""Datasets over a manifest, built on MONAI, using each model's own preprocessing.

A model passes its `load(row) -> np.ndarray` (from `models/<name>/transforms.py`, the code the
sidecar runs in service) and, for training only, MONAI dictionary transforms for augmentation
(e.g. `RandFlipd(keys="image")`). Items are dicts: `image` (float32 tensor), `label` (tensor),
`index` (row number), plus whatever extra keys `load_extra` adds (heatmaps, keypoints, targets).
With `cache=True` the deterministic part (the load) is cached by `monai.data.CacheDataset` and
only the random augmentation runs per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset as MonaiDataset
from monai.transforms import Compose, Transform
from torch.utils.data import Dataset, WeightedRandomSampler

from train.common.manifest import Manifest, ManifestError, ManifestRow
from train.common.seeding import torch_generator

LoadFn = Callable[[ManifestRow], np.ndarray]
TargetFn = Callable[[ManifestRow], Any]
ExtraFn = Callable[[ManifestRow], Mapping[str, Any]]


def class_index_target(classes: Sequence[str]) -> TargetFn:
    """A target function mapping a row's `label` text to its index in `classes`."""
    index = {name: i for i, name in enumerate(classes)}

    def target(row: ManifestRow) -> int:
        try:
            return index[row.label]
        except KeyError:
            raise ManifestError(
                f"{row.path}: label {row.label!r} is not one of {list(classes)}"
            ) from None

    return target


def float_target(row: ManifestRow) -> float:
    """A target function reading `label` as a number (regression, VAS)."""
    try:
        return float(row.label)
    except ValueError:
        raise ManifestError(f"{row.path}: label {row.label!r} is not a number") from None


class _LoadRowd(Transform):
    """The deterministic first step: a row index becomes image, label and extras."""

    def __init__(
        self,
        manifest: Manifest,
        load: LoadFn,
        target: TargetFn | None,
        load_extra: ExtraFn | None,
    ) -> None:
        self.manifest = manifest
        self.load = load
        self.target = target
        self.load_extra = load_extra

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        index = int(data["index"])
        row = self.manifest[index]
        image = np.asarray(self.load(row), dtype=np.float32)
        item: dict[Hashable, Any] = {"index": index, "image": image}
        if self.target is not None:
            item["label"] = self.target(row)
        if self.load_extra is not None:
            item.update(self.load_extra(row))
        return item


class _ToTensord(Transform):
    """The last step: arrays become plain torch tensors (no MONAI metadata in the batch)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out: dict[Hashable, Any] = {}
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                value = value.as_tensor() if hasattr(value, "as_tensor") else value
                out[key] = value.float() if value.is_floating_point() else value
            elif isinstance(value, np.ndarray):
                tensor = torch.from_numpy(np.ascontiguousarray(value))
                out[key] = tensor.float() if tensor.is_floating_point() else tensor
            elif isinstance(value, bool | int | np.integer):
                out[key] = torch.tensor(int(value), dtype=torch.long)
            elif isinstance(value, float | np.floating):
                out[key] = torch.tensor(float(value), dtype=torch.float32)
            else:
                out[key] = value
        return out


class ManifestDataset(Dataset[dict[Hashable, Any]]):
    """A manifest as a torch dataset, through `monai.data.Dataset` or `CacheDataset`.

    `load` turns a row into the network input (channel first); `target` turns a row into the
    label (default: none); `augment` is a sequence of MONAI dictionary transforms applied after
    the load (random ones run every time an item is read); `load_extra` adds keys.
    """

    def __init__(
        self,
        manifest: Manifest,
        load: LoadFn,
        *,
        target: TargetFn | None = None,
        augment: Sequence[Callable[..., Any]] = (),
        load_extra: ExtraFn | None = None,
        cache: bool = False,
        cache_rate: float = 1.0,
        cache_workers: int = 0,
    ) -> None:
        self.manifest = manifest
        transform = Compose(
            [_LoadRowd(manifest, load, target, load_extra), *augment, _ToTensord()]
        )
        data = [{"index": i} for i in range(len(manifest))]
        self._inner: MonaiDataset
        if cache:
            self._inner = CacheDataset(
                data,
                transform,
                cache_rate=cache_rate,
                num_workers=cache_workers or None,
                progress=False,
            )
        else:
            self._inner = MonaiDataset(data, transform)

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, index: int) -> dict[Hashable, Any]:
        return self._inner[index]


def class_counts(labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """How many items each class has (length `n_classes`)."""
    array = np.asarray(labels, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got {array.min()}..{array.max()}")
    return np.bincount(array, minlength=n_classes)


def class_weights(labels: Sequence[int] | np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, n / (k * count_c), for a weighted loss.

    A class with no items gets weight 0 (it cannot contribute to the loss anyway).
    """
    counts = class_counts(labels, n_classes).astype(np.float64)
    total = counts.sum()
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, total / (n_classes * counts), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sampler(
    labels: Sequence[int] | np.ndarray,
    n_classes: int,
    *,
    seed: int,
    num_samples: int | None = None,
) -> WeightedRandomSampler:
    """A seeded sampler that draws every class equally often (with replacement)."""
    array = np.asarray(labels, dtype=np.int64)
    per_class = class_weights(array, n_classes).numpy()
    weights = per_class[array].astype(np.float64).tolist()
    return WeightedRandomSampler(
        weights,
        num_samples=num_samples if num_samples is not None else len(array),
        replacement=True,
        generator=torch_generator(seed),
    )


class FlipGainArrays(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, label) pairs over in-memory arrays; with `augment`, a left-right flip (p = 0.5) and
    a gain of 0.9-1.1, clamped to [0, 1]. Draws from torch's global generator, which the trainer seeds.

    For ultrasound inputs scaled to [0, 1], where a joint is scanned either way round.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, augment: bool) -> None:
        self.x, self.y, self.augment = torch.from_numpy(x), torch.from_numpy(y), augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]
        if self.augment:
            r = torch.rand(2)
            if r[0] < 0.5:
                img = img.flip(-1)
            img = (img * (0.9 + 0.2 * r[1])).clamp(0, 1)
        return img, self.y[i]
