"""The two networks: a heatmap keypoint UNet (MONAI) and a per-joint crop grader.

**Detector.** MONAI's `UNet` (Ronneberger et al. 2015, residual units as in MONAI) maps the
128 x 128 canonical hand (2 mm per pixel) to one map per joint of `joints.JOINTS` (21
channels). Each map is a spatial softmax trained by integral regression (the soft-argmax
coordinate's L1 error, Sun et al. 2018) plus the cross-entropy to a Gaussian target (as DSNT,
Nibali et al. 2018): it learns in a few hundred CPU steps, where a per-pixel focal heatmap loss
needs thousands. The keypoint is the map's expectation (soft-argmax) and its confidence falls
with the map's spread. Every joint of a hand is present exactly once, which a keypoint model
encodes directly (one channel each) while an anchor detector (RetinaNet) would have to learn
it and then de-duplicate; the box follows from geometry (`joints.joint_box`).

**Grader.** A small CNN (strided stem, three conv-pool blocks) on the 64 x 64 joint crop,
with a learned embedding of the joint's identity joined to the pooled features, and two heads of 5 logits: SHS narrowing 0-4 and KL 0-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import UNet
from torch import nn

from models.hand_joints.joints import JOINTS, N_GRADES


@dataclass(frozen=True)
class DetectorConfig:
    """Widths of the UNet levels and its residual units (stored in the checkpoint)."""

    channels: tuple[int, ...] = (16, 32, 48, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1


def build_detector(cfg: DetectorConfig = DetectorConfig()) -> UNet:
    """A 2D UNet, 1 channel in, one heatmap per joint out, batch norm, PReLU."""
    return UNet(spatial_dims=2, in_channels=1, out_channels=len(JOINTS), channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units, norm="BATCH")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class JointGrader(nn.Module):
    """Crop (N, 1, 64, 64) and joint index (N,) -> (SHS logits (N, 5), KL logits (N, 5))."""

    def __init__(self, width: int = 16, n_joints: int = len(JOINTS)) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.features = nn.Sequential(stem, _block(width, 2 * width), _block(2 * width, 3 * width),
                                      _block(3 * width, 4 * width))
        self.embed = nn.Embedding(n_joints, 16)
        self.hidden = nn.Sequential(nn.Linear(4 * width + 16, 64), nn.ReLU(inplace=True), nn.Dropout(0.2))
        self.shs = nn.Linear(64, N_GRADES)
        self.kl = nn.Linear(64, N_GRADES)

    def forward(self, x: torch.Tensor, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x).mean(dim=(2, 3))
        h = self.hidden(torch.cat([f, self.embed(joint)], dim=1))
        return self.shs(h), self.kl(h)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
