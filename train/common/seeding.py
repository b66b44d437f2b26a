"""Seeding and determinism flags, so a training run can be repeated bit for bit on one machine.

`seed_everything` seeds Python, NumPy and torch (CPU and every CUDA device) and, when asked,
turns on torch's deterministic algorithms. DataLoader workers get their own seeds derived from
the loader's base seed through `worker_init_fn`. Exact equality across machines or library
versions is not promised (PyTorch's "Reproducibility" notes); exact equality on one machine is.
"""

from __future__ import annotations

import os
import random
from typing import Any, TypedDict

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed `random`, NumPy and torch; with `deterministic`, ask torch for deterministic kernels.

    `warn_only=True` keeps ops that have no deterministic kernel usable (they warn instead of
    raising); cuDNN autotuning is switched off because it picks kernels by timing.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic GEMMs (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def torch_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`, for DataLoader shuffling and samplers."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def worker_init_fn(worker_id: int) -> None:
    """Seed NumPy and `random` in a DataLoader worker from the seed torch gave that worker."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class RngState(TypedDict, total=False):
    """The global RNG states, as `rng_state` returns them and a checkpoint stores them."""

    python: tuple[Any, ...]
    numpy: tuple[str, torch.Tensor, int, int, float]  # NumPy's legacy state, keys as an int64 tensor
    torch: torch.Tensor
    cuda: list[torch.Tensor]


def rng_state() -> RngState:
    """The global RNG states (Python, NumPy, torch CPU and CUDA), for a checkpoint."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # legacy=True: (name, keys, pos, has_gauss, cached)
    name, keys, pos, has_gauss, cached = legacy
    state: RngState = {
        "python": random.getstate(),
        # As a tensor and plain numbers, so checkpoints load with torch.load(weights_only=True).
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
