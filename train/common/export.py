"""What every task's `export` does, written once: write each network, check it against torch.

A task names its networks (`NetworkToExport`: the float32 torch module whose forward a backend
serves, its `TensorSignature`, and check inputs made from phantoms through the model's own
preprocessing). `export_networks` writes ``<out_dir>/<served name>.onnx|pt`` per network
(``lge_qa.onnx``; ``hand_joints_detector.onnx`` and ``hand_joints_grader.onnx``), optionally a
Triton model per network, and runs the exported file beside the in-process module on the check
inputs, as a batch and as a batch of one (the batch axis is dynamic). An export that differs
from torch by more than the request's tolerance on any output is refused (`ExportError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from models.backends import TensorSignature
from models.backends.export import (
    ExportError,
    TritonBatching,
    export_onnx,
    export_torchscript,
    max_abs_difference_named,
    named_runner_for,
    triton_names,
    write_triton_repository,
)
from models.backends.inprocess import InProcessTorch
from train.tasks import ExportedNetwork, ExportRequest, ExportResult


@dataclass(frozen=True)
class NetworkToExport:
    """One network of a model: its float32 module, signature and phantom check inputs."""

    module: nn.Module
    signature: TensorSignature
    check_inputs: Mapping[str, np.ndarray]  # every input of the signature, one batch


def with_zeros(x: np.ndarray) -> np.ndarray:
    """`x` and one all-zero item after it (an empty image: the edge case a phantom never is)."""
    return np.concatenate([x, np.zeros((1, *x.shape[1:]), dtype=x.dtype)])


def batching_of(request: ExportRequest) -> TritonBatching:
    return TritonBatching(
        max_batch_size=request.max_batch_size, preferred_batch_sizes=tuple(request.preferred_batch_sizes),
        max_queue_delay_us=request.max_queue_delay_us, alert_queue_timeout_ms=request.alert_queue_timeout_ms,
        default_queue_timeout_ms=request.default_queue_timeout_ms)


def _first(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: x[:1] for name, x in inputs.items()}


def export_network(request: ExportRequest, network: NetworkToExport) -> ExportedNetwork:
    """Write one network (and its Triton model), check it, and say how far it was from torch."""
    sig, fmt = network.signature, request.format
    names = [spec.name for spec in sig.inputs]
    if sorted(network.check_inputs) != sorted(names):
        raise ExportError(f"{sig.label}: check inputs {sorted(network.check_inputs)}, the forward takes {names}")
    out = Path(request.out_dir) / f"{sig.served_name}.{'onnx' if fmt == 'onnx' else 'pt'}"
    (export_onnx if fmt == "onnx" else export_torchscript)(network.module, sig, out)
    checked = [out]
    folder = None
    if request.triton_repo is not None:
        folder = write_triton_repository(Path(request.triton_repo), sig, out, fmt, batching_of(request))
        checked.append(folder / "1" / ("model.onnx" if fmt == "onnx" else "model.pt"))
    reference = InProcessTorch(network.module, sig).run_named
    worst = 0.0
    for path in checked:
        candidate = named_runner_for(path, sig, fmt)
        for inputs in (network.check_inputs, _first(network.check_inputs)):
            worst = max(worst, max_abs_difference_named(reference, candidate, inputs))
    if worst > request.tolerance:
        raise ExportError(f"{fmt} export of {sig.label} differs from torch by {worst:.2e} > tolerance "
                          f"{request.tolerance:.1e}")
    in_names: tuple[str, ...]
    out_names: tuple[str, ...]
    if sig.single_tensor:
        in_name, out_name = triton_names(sig, fmt)
        in_names, out_names = (in_name,), (out_name,)
    else:  # ONNX only (TorchScript and Triton refuse these above): the signature's own names
        in_names = tuple(spec.name for spec in sig.inputs)
        out_names = tuple(spec.name for spec in sig.outputs)
    return ExportedNetwork(sig.network, out, folder, worst, in_names, out_names)


def export_networks(request: ExportRequest, networks: Sequence[NetworkToExport]) -> ExportResult:
    """`export_network` for each of a model's networks, in order."""
    if not networks:
        raise ExportError("nothing to export: no network given")
    return ExportResult(tuple(export_network(request, n) for n in networks))
