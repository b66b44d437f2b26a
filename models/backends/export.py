"""Export a model's network forward for the other backends, and check the export against torch.

- `export_onnx`: the forward as ONNX (opset 17, batch axis dynamic) with the model id, card
  version and network in the file's metadata (`OnnxRuntimeBackend` refuses a file of another
  version). The module is the float32 one (`require_float32`).
- `export_torchscript`: the forward traced to TorchScript, for Triton's `pytorch_libtorch`.
- `write_triton_repository`: a Triton model repository, ``<repo>/<model>/config.pbtxt`` and
  ``<repo>/<model>/1/model.onnx|model.pt`` (`render_config` writes the configuration).
- `max_abs_difference` (`max_abs_difference_named` for forwards of several tensors): the largest
  difference between the in-process forward and an exported one on the same inputs; an export
  whose difference exceeds the tolerance is refused.

Every network exports to ONNX. TorchScript and Triton repositories are written for forwards of
one tensor in and one out (Triton's client here sends one); the elastography generator with its
Tsukuba head and the hand-joints grader are refused there, naming their tensors.

`onnx` comes with `pip install .[onnx]` (onnxruntime is a base dependency); both are imported
only here, when an export runs.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import torch
from torch import nn

from models.backends.base import BackendUnavailable, TensorSignature

ExportFormat = Literal["onnx", "torchscript"]
ONNX_OPSET = 17


class ExportError(ValueError):
    """An export that cannot be written or does not agree with the in-process model."""


@dataclass(frozen=True)
class TritonBatching:
    """The dynamic batcher and queue policy written into config.pbtxt.

    Two priority levels: 1 for streaming alerts (the sidecar's default), 2 for everything else
    (Triton's default level here). Each level has a queue timeout after which Triton rejects a
    request rather than answer it late; clients may shorten it per request (the sidecar sends the
    time left of its deadline).
    """

    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000
    priority_levels: int = 2
    default_priority_level: int = 2
    alert_queue_timeout_ms: int = 500  # priority level 1
    default_queue_timeout_ms: int = 5000  # every other level
    max_queue_size: int = 256

    def __post_init__(self) -> None:
        if any(b < 1 or b > self.max_batch_size for b in self.preferred_batch_sizes):
            raise ExportError(f"preferred batch sizes {self.preferred_batch_sizes} must lie in "
                              f"1..{self.max_batch_size}")
        if not 1 <= self.default_priority_level <= self.priority_levels:
            raise ExportError("default_priority_level must be one of the priority levels")


def triton_names(signature: TensorSignature, fmt: ExportFormat) -> tuple[str, str]:
    """(input, output) tensor names in Triton: TorchScript needs the ``<name>__<index>`` form."""
    if fmt == "torchscript":
        return f"{signature.input_name}__0", f"{signature.output_name}__0"
    return signature.input_name, signature.output_name


def _dims(shape: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def render_config(signature: TensorSignature, fmt: ExportFormat, batching: TritonBatching = TritonBatching()) -> str:
    """config.pbtxt for one model: platform, batch size, tensors, dynamic batching, queue policy."""
    single_tensor_only(signature, "a Triton model configuration")
    platform = "onnxruntime_onnx" if fmt == "onnx" else "pytorch_libtorch"
    in_name, out_name = triton_names(signature, fmt)
    if signature.output_shape:
        output = f"    dims: {_dims(signature.output_shape)}\n"
    else:  # one scalar per item: the model's output is [batch]; Triton needs dims [1] reshaped to []
        output = "    dims: [ 1 ]\n    reshape: { shape: [ ] }\n"
    def timeout_us(level: int) -> int:
        return (batching.alert_queue_timeout_ms if level == 1 else batching.default_queue_timeout_ms) * 1000

    levels = "".join(
        f"  priority_queue_policy {{\n    key: {level}\n    value: {{\n"
        f"      timeout_action: REJECT\n"
        f"      default_timeout_microseconds: {timeout_us(level)}\n"
        f"      allow_timeout_override: true\n      max_queue_size: {batching.max_queue_size}\n    }}\n  }}\n"
        for level in range(1, batching.priority_levels + 1)
    )
    return (
        f"# {signature.label} {signature.version}: written by python -m train {signature.model_name} export\n"
        f'name: "{signature.served_name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {batching.max_batch_size}\n"
        f"input [\n  {{\n    name: \"{in_name}\"\n    data_type: TYPE_FP32\n"
        f"    dims: {_dims(signature.input_shape)}\n  }}\n]\n"
        f"output [\n  {{\n    name: \"{out_name}\"\n    data_type: TYPE_FP32\n{output}  }}\n]\n"
        f"dynamic_batching {{\n"
        f"  preferred_batch_size: {_dims(batching.preferred_batch_sizes)}\n"
        f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}\n"
        f"  priority_levels: {batching.priority_levels}\n"
        f"  default_priority_level: {batching.default_priority_level}\n"
        f"  default_queue_policy {{\n    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {batching.default_queue_timeout_ms * 1000}\n"
        f"    allow_timeout_override: true\n    max_queue_size: {batching.max_queue_size}\n  }}\n"
        f"{levels}"
        f"}}\n"
        f"version_policy: {{ specific: {{ versions: [ 1 ] }} }}\n"
        f'parameters {{\n  key: "model_version"\n  value: {{ string_value: "{signature.version}" }}\n}}\n'
    )


def _import_onnx() -> ModuleType:
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable("onnx is not installed; install it with: pip install '.[onnx]'") from exc
    return onnx


def require_float32(net: nn.Module, signature: TensorSignature) -> None:
    """`ExportError` unless every floating parameter and buffer of `net` is float32: exports are
    made from the float32 module (checkpoints stored in float16 are widened when loaded), so the
    exported forward takes and gives float32 as the seam says."""
    for name, tensor in (*net.named_parameters(), *net.named_buffers()):
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ExportError(f"{signature.label}: {name} is {tensor.dtype}; export the float32 module")


def example_inputs(signature: TensorSignature, n: int = 2) -> tuple[torch.Tensor, ...]:
    """Zeros of every input of `signature` for a batch of `n` (indices: zeros, a valid index)."""
    return tuple(torch.zeros((n, *spec.shape), dtype=torch.float32 if spec.dtype == "float32" else torch.int64)
                 for spec in signature.inputs)


def export_onnx(net: nn.Module, signature: TensorSignature, path: Path) -> Path:
    """Write `net`'s forward as ONNX with a dynamic batch axis on every tensor and the model id,
    version and network in its metadata."""
    onnx = _import_onnx()
    require_float32(net, signature)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [spec.name for spec in (*signature.inputs, *signature.outputs)]
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # the trace fixes Python values read from shapes (image size, grid): only the batch axis is
        # dynamic, and the tasks' exports run the file against torch on real inputs right after
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python")  # torch.jit.TracerWarning
        torch.onnx.export(
            net.eval(), example_inputs(signature), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[spec.name for spec in signature.inputs],
            output_names=[spec.name for spec in signature.outputs],
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    model = onnx.load(str(path))
    metadata = [("model_id", signature.model_name), ("model_version", signature.version)]
    if signature.network:
        metadata.append(("network", signature.network))
    for key, value in metadata:
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def single_tensor_only(signature: TensorSignature, what: str) -> None:
    """`ExportError` for a forward of extra inputs or outputs where `what` serves one of each."""
    if not signature.single_tensor:
        raise ExportError(f"{what} is written for forwards of one tensor in and one out; the {signature.label} "
                          f"forward takes {[t.name for t in signature.inputs]} and gives "
                          f"{[t.name for t in signature.outputs]} (export it as ONNX for onnxruntime)")


def export_torchscript(net: nn.Module, signature: TensorSignature, path: Path) -> Path:
    """Write `net`'s forward traced to TorchScript, with the version as an extra file."""
    single_tensor_only(signature, "a TorchScript export (for Triton's pytorch_libtorch)")
    require_float32(net, signature)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, *signature.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():  # torch deprecates TorchScript; Triton's libtorch backend still runs it
        warnings.simplefilter("ignore", category=DeprecationWarning)
        with torch.no_grad():
            traced = torch.jit.trace(net.eval(), (example,))  # type: ignore[no-untyped-call]  # torch.jit is unannotated
        torch.jit.save(traced, str(path), _extra_files={"model_version": signature.version})
    return path


def write_triton_repository(
    repo: Path, signature: TensorSignature, model_file: Path, fmt: ExportFormat,
    batching: TritonBatching = TritonBatching(),
) -> Path:
    """``repo/<model>/config.pbtxt`` and ``repo/<model>/1/model.<onnx|pt>``; returns the model folder
    (``<model>_<network>`` for one network of several)."""
    config = render_config(signature, fmt, batching)  # first: a forward Triton cannot serve writes nothing
    folder = repo / signature.served_name
    version_dir = folder / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version_dir / ("model.onnx" if fmt == "onnx" else "model.pt"))
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    return folder


def runner_for(path: Path, signature: TensorSignature, fmt: ExportFormat) -> Callable[[np.ndarray], np.ndarray]:
    """A forward function over an exported file: onnxruntime for ONNX, torch.jit for TorchScript."""
    if fmt == "onnx":
        from models.backends.base import OnnxRuntimeConfig
        from models.backends.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(OnnxRuntimeConfig.of_file(path, signature), signature).run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]  # torch.jit is unannotated

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = module(torch.from_numpy(x)).numpy()
            return result

    return run


NamedForward = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def named_runner_for(path: Path, signature: TensorSignature, fmt: ExportFormat) -> NamedForward:
    """`runner_for` by name: every input in, every output out (ONNX; TorchScript is one-in, one-out)."""
    if fmt == "onnx":
        from models.backends.base import OnnxRuntimeConfig
        from models.backends.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(OnnxRuntimeConfig.of_file(path, signature), signature).run_named
    single_tensor_only(signature, "a TorchScript export")
    run = runner_for(path, signature, fmt)
    return lambda inputs: {signature.output_name: run(np.asarray(inputs[signature.input_name]))}


def max_abs_difference_named(reference: NamedForward, candidate: NamedForward,
                             inputs: Mapping[str, np.ndarray]) -> float:
    """The largest |reference - candidate| over every output for `inputs`."""
    a, b = reference(inputs), candidate(inputs)
    if set(a) != set(b):
        raise ExportError(f"exported model answers {sorted(b)}, the in-process model {sorted(a)}")
    worst = 0.0
    for name in a:
        x, y = np.asarray(a[name], dtype=np.float64), np.asarray(b[name], dtype=np.float64)
        if x.shape != y.shape:
            raise ExportError(f"exported model answers {name} of shape {y.shape}, the in-process model {x.shape}")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


def max_abs_difference(reference: Callable[[np.ndarray], np.ndarray],
                       candidate: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> float:
    """The largest |reference - candidate| over the outputs for `inputs`."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    a, b = np.asarray(reference(x), dtype=np.float64), np.asarray(candidate(x), dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"exported model answers shape {b.shape}, the in-process model {a.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0
