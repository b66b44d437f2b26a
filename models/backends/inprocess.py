"""The default backend: the model's own torch module, in this process."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from models.backends.base import TensorSignature, as_inputs


class InProcessTorch:
    """Runs `net` under `torch.inference_mode` on CPU tensors; nothing to open or close.

    `signature` maps names to the module's arguments and results (its order); without it the
    module is one tensor in, one out, and only `run` serves it.
    """

    name = "inprocess"

    def __init__(self, net: nn.Module, signature: TensorSignature | None = None) -> None:
        self.net = net.eval()
        self.signature = signature

    def run(self, inputs: np.ndarray) -> np.ndarray:
        if self.signature is not None and not self.signature.single_tensor:
            return self.run_named({self.signature.input_name: inputs})[self.signature.output_name]
        with torch.inference_mode():
            result: np.ndarray = self.net(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))).numpy()
            return result

    def run_named(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = self.signature
        if sig is None:
            raise TypeError("InProcessTorch without a signature serves run() only")
        feeds = as_inputs(inputs, sig)
        with torch.inference_mode():
            answer = self.net(*(torch.from_numpy(feeds[spec.name]) for spec in sig.inputs))
        results = (answer,) if isinstance(answer, torch.Tensor) else tuple(answer)
        if len(results) != len(sig.outputs):
            raise TypeError(f"{sig.label}: module gave {len(results)} outputs, its signature names {len(sig.outputs)}")
        return {spec.name: t.numpy() for spec, t in zip(sig.outputs, results, strict=True)}

    def close(self) -> None:
        """Nothing to release: the module stays with its model."""
