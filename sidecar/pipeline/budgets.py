"""Decoded-size budgets, checked from the header before any pixel is decoded.

An instance's decoded size is Rows x Columns x NumberOfFrames x SamplesPerPixel x
ceil(BitsAllocated / 8) (PS3.3 C.7.6.3); a compressed file can be tiny and still claim a billion
frames (RLE Lossless, one fragment), so its size on disk says nothing. Over the per-instance or
per-job budget the job fails permanently with `BudgetExceeded`, naming the sizes, not the values
of any patient attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset

from sidecar.pipeline.failures import BudgetExceeded


@dataclass(frozen=True)
class DecodeBudget:
    max_instance_bytes: int = 1 << 30  # 1 GiB decoded per instance
    max_job_bytes: int = 4 << 30  # 4 GiB decoded per job (a whole series)


def decoded_bytes(ds: Dataset) -> int:
    """Bytes `pixel_array` would allocate for all frames; 0 for an instance without pixel data."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return 0
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError) as exc:
        raise BudgetExceeded("image dimensions in the header are not numbers") from exc
    if min(rows, cols, frames, samples, bits) < 0:
        raise BudgetExceeded("negative image dimensions in the header")
    return rows * cols * frames * samples * ((bits + 7) // 8)


def check_budget(datasets: Sequence[Dataset], budget: DecodeBudget) -> int:
    """Raise `BudgetExceeded` when any instance, or all of them together, would decode too large."""
    total = 0
    for ds in datasets:
        n = decoded_bytes(ds)
        if n > budget.max_instance_bytes:
            raise BudgetExceeded(f"an instance would decode to {n / 2**20:.0f} MiB"
                                 f" (budget {budget.max_instance_bytes / 2**20:.0f} MiB per instance)")
        total += n
    if total > budget.max_job_bytes:
        raise BudgetExceeded(f"the job would decode to {total / 2**20:.0f} MiB"
                             f" (budget {budget.max_job_bytes / 2**20:.0f} MiB per job)")
    return total
