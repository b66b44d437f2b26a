"""An exported ONNX file run by onnxruntime in this process (the bundled models' default).

onnxruntime is imported when the backend is opened, never at import of this package, so the
default install needs none of it. The file must carry the model version it was exported from
(`model_version` in its metadata, written by `python -m train <model> export`) and that version
must be the model card's: a file exported from other weights would answer under the wrong
version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.backends.base import (
    BackendUnavailable,
    InferenceFailed,
    OnnxRuntimeConfig,
    TensorSignature,
    as_inputs,
    as_output,
)
from models.checkpoint import ModelUnavailable, verify_weights

INSTALL_HINT = "install it with: pip install onnxruntime (a dependency of the sidecar)"


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

        path = config.for_network(signature).model_file
        if path is None:
            raise BackendUnavailable(f"{signature.label}: no ONNX model_file configured")
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
        network = meta.get("network", "")
        if network != sig.network:
            raise BackendUnavailable(f"{path} is the export of the {network or 'only'} network of "
                                     f"{meta.get('model_id')!r}; expected the {sig.label} network")
        inputs = {i.name: tuple(i.shape[1:]) for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        want_in, want_out = [s.name for s in sig.inputs], [s.name for s in sig.outputs]
        if set(inputs) != set(want_in) or not set(want_out) <= outputs:
            raise BackendUnavailable(
                f"{path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected inputs "
                f"{want_in} and outputs {want_out}"
            )
        for spec in sig.inputs:
            if inputs[spec.name] != spec.shape:
                raise BackendUnavailable(f"{path} takes {spec.name} of shape {inputs[spec.name]} per item, "
                                         f"expected {spec.shape}")

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.run_named({self.signature.input_name: inputs})[self.signature.output_name]

    def run_named(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = self.signature
        feeds = as_inputs(inputs, sig)
        names = [spec.name for spec in sig.outputs]
        try:
            answers = self.session.run(names, feeds)
        except Exception as exc:  # onnxruntime's errors are not rooted; the job gets the reason
            raise InferenceFailed(f"onnxruntime: {type(exc).__name__}: {str(exc)[:200]}") from exc
        n = len(next(iter(feeds.values())))
        return {spec.name: as_output(out, sig, n, spec) for spec, out in zip(sig.outputs, answers, strict=True)}

    def close(self) -> None:
        """Nothing to release early: onnxruntime frees the session with this object."""
