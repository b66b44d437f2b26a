"""The seam between a model's prepare/predict and its network forward.

A clinical model keeps pre- and post-processing in `models/<id>/` (the code training uses); only
the forward pass — one float32 tensor in, one float32 tensor out — is handed to a
`TensorBackend`. So every backend sees exactly the same tensors, and a model adopts the seam by
offering `tensor_signature()` and `use_backend()` (`SwappableForward`).

Errors (one tree)::

    BackendError
    ├── BackendUnavailable   the backend cannot be opened: optional install missing, model file
    │                        missing or of another version, signature mismatch (the model is
    │                        then unavailable, as with bad weights)
    └── InferenceFailed      one forward failed: endpoints down, deadline spent, server error
                             (the job fails with this reason)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np


class BackendError(Exception):
    """Root of the backend errors."""


class BackendUnavailable(BackendError):
    """A backend cannot be opened; the message says why and, for an optional install, what to install."""


class InferenceFailed(BackendError):
    """One forward pass failed; the message is the job's failure reason."""


@dataclass(frozen=True)
class TensorSignature:
    """What a model's forward takes and gives, without the batch axis; float32 only.

    `version` is the model card's version: a model file or server model exported from other
    weights must not answer under this version (result UIDs and the exactly-once key carry it).
    """

    model_name: str
    version: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...] = ()


@runtime_checkable
class TensorBackend(Protocol):
    """Runs a model's network forward: (N, *input_shape) float32 -> (N, *output_shape) float32."""

    name: str

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """One forward pass; raises `InferenceFailed` with a reason a person can act on."""
        ...

    def close(self) -> None:
        """Release sessions, connections and threads."""
        ...


@runtime_checkable
class SwappableForward(Protocol):
    """A model whose network forward can be served by a backend other than its own torch module."""

    def tensor_signature(self) -> TensorSignature:
        """Names and shapes of the forward's input and output."""
        ...

    def use_backend(self, backend: TensorBackend) -> None:
        """Send every later forward pass to `backend`."""
        ...


@dataclass(frozen=True)
class InProcessConfig:
    """The model's own torch module in this process (the default)."""

    kind: Literal["inprocess"] = "inprocess"


@dataclass(frozen=True)
class OnnxRuntimeConfig:
    """An exported ONNX file run by onnxruntime in this process (`pip install .[onnx]`)."""

    model_file: Path
    sha256: str | None = None
    threads: int = 0  # intra-op threads; 0: onnxruntime's default
    kind: Literal["onnxruntime"] = "onnxruntime"


@dataclass(frozen=True)
class TritonConfig:
    """A model on one or more Triton servers over gRPC (`pip install .[triton]`).

    `deadline_ms` bounds one forward pass including its one retry on another endpoint;
    `priority` is Triton's priority level (1 is the highest; exported configs have two levels,
    default 2), so streaming alerts jump the dynamic batcher's queue.
    """

    endpoints: tuple[str, ...]
    model_name: str | None = None  # default: the signature's model name
    model_version: str = ""  # Triton model version; "" lets the server's policy choose
    deadline_ms: float = 500.0
    priority: int = 1
    max_batch_size: int = 16  # larger batches are split into requests of at most this many
    input_name: str | None = None  # default: the signature's (a TorchScript export uses "<name>__0")
    output_name: str | None = None
    cooldown_s: float = 5.0  # an endpoint that failed is tried last for this long
    kind: Literal["triton"] = "triton"


BackendConfig = InProcessConfig | OnnxRuntimeConfig | TritonConfig


def as_output(array: np.ndarray, signature: TensorSignature, n: int) -> np.ndarray:
    """`array` as (n, *output_shape) float32, or `InferenceFailed` naming the shape it had."""
    out = np.array(array, dtype=np.float32)  # a writable copy: gRPC answers are read-only buffers
    want = (n, *signature.output_shape)
    if out.size != int(np.prod(want)):
        raise InferenceFailed(f"{signature.model_name}: backend answered shape {out.shape}, expected {want}")
    return out.reshape(want)
