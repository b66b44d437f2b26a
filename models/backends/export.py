"""Export a model's network forward for the other backends, and check the export against torch.

- `export_onnx`: the forward as ONNX (opset 17, batch axis dynamic) with the model id and card
  version in the file's metadata (`OnnxRuntimeBackend` refuses a file of another version).
- `export_torchscript`: the forward traced to TorchScript, for Triton's `pytorch_libtorch`.
- `write_triton_repository`: a Triton model repository, ``<repo>/<model>/config.pbtxt`` and
  ``<repo>/<model>/1/model.onnx|model.pt`` (`render_config` writes the configuration).
- `max_abs_difference`: the largest difference between the in-process forward and an exported
  one on the same inputs; an export whose difference exceeds the tolerance is refused.

`onnx` and `onnxruntime` come with `pip install .[onnx]` and are imported only here, when an
export runs.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
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
        f"# {signature.model_name} {signature.version}: written by python -m train {signature.model_name} export\n"
        f'name: "{signature.model_name}"\n'
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


def export_onnx(net: nn.Module, signature: TensorSignature, path: Path) -> Path:
    """Write `net`'s forward as ONNX with a dynamic batch axis and the version in its metadata."""
    onnx = _import_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, *signature.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            net.eval(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[signature.input_name], output_names=[signature.output_name],
            dynamic_axes={signature.input_name: {0: "batch"}, signature.output_name: {0: "batch"}},
        )
    model = onnx.load(str(path))
    for key, value in (("model_id", signature.model_name), ("model_version", signature.version)):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_torchscript(net: nn.Module, signature: TensorSignature, path: Path) -> Path:
    """Write `net`'s forward traced to TorchScript, with the version as an extra file."""
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
    """``repo/<model>/config.pbtxt`` and ``repo/<model>/1/model.<onnx|pt>``; returns the model folder."""
    folder = repo / signature.model_name
    version_dir = folder / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version_dir / ("model.onnx" if fmt == "onnx" else "model.pt"))
    (folder / "config.pbtxt").write_text(render_config(signature, fmt, batching), encoding="utf-8")
    return folder


def runner_for(path: Path, signature: TensorSignature, fmt: ExportFormat) -> Callable[[np.ndarray], np.ndarray]:
    """A forward function over an exported file: onnxruntime for ONNX, torch.jit for TorchScript."""
    if fmt == "onnx":
        from models.backends.base import OnnxRuntimeConfig
        from models.backends.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(OnnxRuntimeConfig(model_file=path), signature).run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]  # torch.jit is unannotated

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = module(torch.from_numpy(x)).numpy()
            return result

    return run


def max_abs_difference(reference: Callable[[np.ndarray], np.ndarray],
                       candidate: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> float:
    """The largest |reference - candidate| over the outputs for `inputs`."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    a, b = np.asarray(reference(x), dtype=np.float64), np.asarray(candidate(x), dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"exported model answers shape {b.shape}, the in-process model {a.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0
