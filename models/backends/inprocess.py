"""The default backend: the model's own torch module, in this process."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class InProcessTorch:
    """Runs `net` under `torch.inference_mode` on CPU tensors; nothing to open or close."""

    name = "inprocess"

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = self.net(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))).numpy()
            return result

    def close(self) -> None:
        """Nothing to release: the module stays with its model."""
