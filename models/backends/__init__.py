"""Inference backends: where a model's network forwards run (conf/models.yaml `backend`).

- `inprocess` (the default when `backend` is not given): the model's torch modules in this process (`InProcessTorch`).
- `onnxruntime`: exported ONNX files, in this process (`OnnxRuntimeBackend`; the bundled
  models' default in conf/models.yaml, 2-10x faster than torch here: bench.backends).
- `triton`: Triton Inference Server endpoints over gRPC (`TritonBackend`, `.[triton]`).

Pre- and post-processing stay in the model's own package; a backend replaces only the forward
(`TensorBackend.run`, or `run_named` for a forward of several tensors), so all three see the same
tensors. The optional libraries are imported when a backend is opened, never when this package
is imported.

Every model the registry knows has adopted the seam: lge_qa, breast_elastography, hand_joints
(two networks: detector and grader), synovitis_sgs/dgs/spd/dpd and gout_mtp1. Each took three
steps, and a new model takes the same:
1. keep each torch module's forward free of pre/post-processing (tensors in, tensors out,
   float32 but for an index a network looks up);
2. hold a `TensorBackend` per network (`InProcessTorch(net, signature)` by default) and call it
   where the module was called, including in `warm_up`;
3. offer `tensor_signatures()` (per network: input/output names and per-item shapes, the card
   version, the network's name when there are several) and `use_backend(backend, network)`.
   `models.registry.build_model` then opens the configured backend for each network; a model
   without these methods runs in process only, and asking for another backend makes it
   unavailable with that reason.

What does not fit everywhere: Triton (and the TorchScript export for it) serves forwards of one
tensor in and one out, so the elastography generator with its Tsukuba head and the hand-joints
grader run in process or on onnxruntime; asking Triton for them makes the model unavailable,
naming their tensors.
"""

from __future__ import annotations

from models.backends.base import (
    BackendConfig,
    BackendError,
    BackendUnavailable,
    InferenceFailed,
    InProcessConfig,
    OnnxNetworkFile,
    OnnxRuntimeConfig,
    SwappableForward,
    TensorBackend,
    TensorSignature,
    TensorSpec,
    TritonConfig,
)

__all__ = [
    "BackendConfig", "BackendError", "BackendUnavailable", "InProcessConfig", "InferenceFailed",
    "OnnxNetworkFile", "OnnxRuntimeConfig", "SwappableForward", "TensorBackend", "TensorSignature",
    "TensorSpec", "TritonConfig", "open_backend",
]


def open_backend(config: BackendConfig, signature: TensorSignature) -> TensorBackend:
    """The backend `config` names, for the network `signature` describes (not `inprocess`: the
    model has it). A configuration of several networks is resolved to this one's part here."""
    if isinstance(config, OnnxRuntimeConfig):
        from models.backends.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(config, signature)
    if isinstance(config, TritonConfig):
        from models.backends.triton import TritonBackend

        return TritonBackend(config, signature)
    raise BackendUnavailable(f"backend {config.kind!r} is the model's own; nothing to open")
