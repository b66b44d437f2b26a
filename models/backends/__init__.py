"""Inference backends: where a model's network forward runs (conf/models.yaml `backend`).

- `inprocess` (default): the model's torch module in this process (`InProcessTorch`).
- `onnxruntime`: an exported ONNX file, in this process (`OnnxRuntimeBackend`, `.[onnx]`).
- `triton`: Triton Inference Server endpoints over gRPC (`TritonBackend`, `.[triton]`).

Pre- and post-processing stay in the model's own package; a backend replaces only the forward
(`TensorBackend.run`), so all three see the same tensors. The optional libraries are imported
when a backend is opened, never when this package is imported.

How a model adopts the seam (done for `lge_qa`; the other models follow the same three steps):
1. keep the torch module's forward free of pre/post-processing (tensor in, tensor out);
2. hold a `TensorBackend` (`InProcessTorch(net)` by default) and call `backend.run` where the
   module was called, including in `warm_up`;
3. offer `tensor_signature()` (input/output names and per-item shapes, the card version) and
   `use_backend(backend)`. `models.registry.build_model` then opens the configured backend; a
   model without these methods runs in process only, and asking for another backend makes it
   unavailable with that reason.
"""

from __future__ import annotations

from models.backends.base import (
    BackendConfig,
    BackendError,
    BackendUnavailable,
    InferenceFailed,
    InProcessConfig,
    OnnxRuntimeConfig,
    SwappableForward,
    TensorBackend,
    TensorSignature,
    TritonConfig,
)

__all__ = [
    "BackendConfig", "BackendError", "BackendUnavailable", "InProcessConfig", "InferenceFailed",
    "OnnxRuntimeConfig", "SwappableForward", "TensorBackend", "TensorSignature", "TritonConfig",
    "open_backend",
]


def open_backend(config: BackendConfig, signature: TensorSignature) -> TensorBackend:
    """The backend `config` names, for a model with `signature` (not `inprocess`: the model has it)."""
    if isinstance(config, OnnxRuntimeConfig):
        from models.backends.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(config, signature)
    if isinstance(config, TritonConfig):
        from models.backends.triton import TritonBackend

        return TritonBackend(config, signature)
    raise BackendUnavailable(f"backend {config.kind!r} is the model's own; nothing to open")
