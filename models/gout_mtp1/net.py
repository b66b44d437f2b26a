"""ResNet-50 (MONAI) for MTP1 ultrasound: one greyscale channel in, one logit (abnormal) out.

The study used ResNet-50. `SIZES["resnet50"]` is that network (bottleneck blocks 3-4-6-3, widths
64-128-256-512, ~23 M parameters, ~94 MB in float32). The bundled demo weights use
`"resnet50_quarter"`: the same depth and bottleneck layout at a quarter of the widths
(16-32-64-128, ~1.5 M parameters), so the checkpoint stays under 10 MB and trains on phantoms
in a few CPU minutes. Stem: 7x7 stride 2 (`conv1_t_stride=2`) and max-pool, as in the paper.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

SIZES: dict[str, list[int]] = {
    "resnet50": [64, 128, 256, 512],
    "resnet50_quarter": [16, 32, 64, 128],
}


class GoutNet(nn.Module):
    """(N, 1, H, W) -> (N,) logits of P(abnormal)."""

    def __init__(self, size: str = "resnet50_quarter") -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; one of {sorted(SIZES)}")
        self.size = size
        self.encoder = ResNet(block="bottleneck", layers=[3, 4, 6, 3], block_inplanes=SIZES[size],
                              spatial_dims=2, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2,
                              feed_forward=False)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(SIZES[size][-1] * 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(self.encoder(x)).squeeze(1)
        return result
