"""An exported ONNX file run by onnxruntime in this process (`pip install .[onnx]`).

onnxruntime is imported when the backend is opened, never at import of this package, so the
default install needs none of it. The file must carry the model version it was exported from
(`model_version` in its metadata, written by `python -m train <model> export`) and that version
must be the model card's: a file exported from other weights would answer under the wrong
version.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.backends.base import (
    BackendUnavailable,
    InferenceFailed,
    OnnxRuntimeConfig,
    TensorSignature,
    as_output,
)
from models.checkpoint import ModelUnavailable, verify_weights

INSTALL_HINT = "install the optional backend with: pip install '.[onnx]'"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or `BackendUnavailable` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed; {INSTALL_HINT}") from exc
    return onnxruntime


class OnnxRuntimeBackend:
    """One onnxruntime `InferenceSession` on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, config: OnnxRuntimeConfig, signature: TensorSignature) -> None:
        ort = import_onnxruntime()

        path = config.model_file
        try:
            verify_weights(path, config.sha256)
        except ModelUnavailable as exc:
            raise BackendUnavailable(f"ONNX model: {exc}") from exc
        options = ort.SessionOptions()
        if config.threads:
            options.intra_op_num_threads = config.threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrooted exception types
            raise BackendUnavailable(f"onnxruntime cannot load {path}: {type(exc).__name__}: {exc}") from exc
        self.signature = signature
        self._check(path)

    def _check(self, path: object) -> None:
        sig = self.signature
        meta = self.session.get_modelmeta().custom_metadata_map
        version = meta.get("model_version")
        if version != sig.version:
            raise BackendUnavailable(
                f"{path} was exported from {sig.model_name} version {version!r}; the loaded weights are "
                f"version {sig.version!r} (export again: python -m train {sig.model_name} export --format onnx)"
            )
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if sig.input_name not in inputs or sig.output_name not in outputs:
            raise BackendUnavailable(
                f"{path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected input "
                f"{sig.input_name!r} and output {sig.output_name!r}"
            )
        fixed = tuple(d for d in inputs[sig.input_name][1:])
        if fixed != sig.input_shape:
            raise BackendUnavailable(f"{path} takes {sig.input_name} of shape {fixed} per item, "
                                     f"expected {sig.input_shape}")

    def run(self, inputs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        try:
            [out] = self.session.run([self.signature.output_name], {self.signature.input_name: x})
        except Exception as exc:  # onnxruntime's errors are not rooted; the job gets the reason
            raise InferenceFailed(f"onnxruntime: {type(exc).__name__}: {str(exc)[:200]}") from exc
        return as_output(out, self.signature, len(x))

    def close(self) -> None:
        """Nothing to release early: onnxruntime frees the session with this object."""
