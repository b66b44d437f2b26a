"""MONAI ResNet backbones for synovitis grading, still and cine.

Still images: a 2D MONAI `ResNet` with the usual stride-2 7x7 stem (`conv1_t_stride=2`; MONAI's
default stride 1 costs about 4x the compute for nothing at this resolution) and a max-pool,
global average pooling, a linear head over the four grades.

Cine: the same 2D backbone over each sampled frame, then temporal pooling (mean and max of the
frame features, concatenated) and the head. Chosen over a (2+1)D or 3D ResNet because (a) the
cost is exactly frames x the still cost, with no 3D convolutions (slow on CPU), (b) the
backbone shares its design with the still models, and (c) the max over time keeps the peak
of pulsatile power Doppler, which is what a reader grades, while the mean pools speckle.
Measured on two CPU threads (see the card): a still in a few ms, an 8-frame cine in 8x that.

Sizes (`SIZES`): "demo" is ResNet-10 layout (one basic block per stage) at 24-48-96-192 channels,
~1.2 M parameters, what the bundled demo weights use; "resnet18" is the standard layout and
widths (~11 M parameters), for sites that train on real data.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

N_GRADES = 4
SIZES: dict[str, tuple[list[int], list[int]]] = {
    "demo": ([1, 1, 1, 1], [24, 48, 96, 192]),
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512]),
}


def backbone(size: str, in_channels: int) -> ResNet:
    """A 2D MONAI ResNet that returns pooled features (no classifier)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {sorted(SIZES)}")
    layers, widths = SIZES[size]
    return ResNet(block="basic", layers=layers, block_inplanes=widths, spatial_dims=2,
                  n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                  feed_forward=False)


class SynovitisNet(nn.Module):
    """(N, C, H, W) stills or (N, T, C, H, W) cines -> (N, 4) grade logits."""

    def __init__(self, in_channels: int, cine: bool, size: str = "demo") -> None:
        super().__init__()
        self.cine, self.size, self.in_channels = cine, size, in_channels
        self.encoder = backbone(size, in_channels)
        features = SIZES[size][1][-1]
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(features * (2 if cine else 1), N_GRADES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cine:
            result: torch.Tensor = self.head(self.encoder(x))
            return result
        n, t = x.shape[:2]
        f = self.encoder(x.reshape(n * t, *x.shape[2:])).reshape(n, t, -1)
        graded: torch.Tensor = self.head(torch.cat([f.mean(dim=1), f.amax(dim=1)], dim=1))
        return graded
