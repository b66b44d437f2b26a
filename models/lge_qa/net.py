"""EfficientNetV2 for one-channel PSIR slices, written with plain torch building blocks.

Tan & Le, "EfficientNetV2: Smaller Models and Faster Training" (ICML 2021): Fused-MBConv blocks
(a full 3x3 expansion convolution, no depthwise step) in the early, high-resolution stages, and
MBConv blocks (1x1 expansion, 3x3 depthwise, squeeze-excitation, 1x1 projection) later. The
squeeze width is a quarter of the block's *input* channels, as in the paper's reference code.
torchvision's copy does not import beside this CPU torch, so the network is written here.

Sizes (`SIZES`):

- ``"s"``: the published EfficientNetV2-S stage layout (24-48-64-128-160-256, 2/4/4/6/9/15
  layers, head 1280), ~20 M parameters; ~45 ms per 256x256 slice on two CPU cores.
- ``"b0"`` (default): the EfficientNetV2-B0 layout (16-32-48-96-112-192, 1/2/2/3/5/8 layers,
  head 1280), ~6 M parameters; well under the 50 ms budget on two cores.
- ``"tiny"``: B0's stage pattern at about half width and shallower, ~0.4 M parameters; what the
  bundled demo weights use, because it trains on phantoms in a few CPU minutes and keeps the
  checkpoint under 3 MB. The checkpoint names its size, so serving builds the same network.

The output is one logit per slice: the log-odds that the slice is *low certainty*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Stage:
    """One stage: block kind, expansion ratio, stride of its first layer, output channels, layers."""

    fused: bool
    expand: int
    stride: int
    channels: int
    layers: int
    se: float = 0.0  # squeeze ratio relative to block input channels; 0 = no SE


@dataclass(frozen=True)
class NetConfig:
    """A whole network: stem width, stages, head width and dropout before the classifier."""

    stem: int
    stages: tuple[Stage, ...]
    head: int
    dropout: float


SIZES: dict[str, NetConfig] = {
    "tiny": NetConfig(
        stem=16,
        stages=(
            Stage(True, 1, 1, 16, 1),
            Stage(True, 4, 2, 24, 1),
            Stage(True, 4, 2, 32, 2),
            Stage(False, 4, 2, 64, 2, 0.25),
            Stage(False, 4, 1, 80, 2, 0.25),
            Stage(False, 4, 2, 112, 2, 0.25),
        ),
        head=384,
        dropout=0.2,
    ),
    "b0": NetConfig(
        stem=32,
        stages=(
            Stage(True, 1, 1, 16, 1),
            Stage(True, 4, 2, 32, 2),
            Stage(True, 4, 2, 48, 2),
            Stage(False, 4, 2, 96, 3, 0.25),
            Stage(False, 6, 1, 112, 5, 0.25),
            Stage(False, 6, 2, 192, 8, 0.25),
        ),
        head=1280,
        dropout=0.2,
    ),
    "s": NetConfig(
        stem=24,
        stages=(
            Stage(True, 1, 1, 24, 2),
            Stage(True, 4, 2, 48, 4),
            Stage(True, 4, 2, 64, 4),
            Stage(False, 4, 2, 128, 6, 0.25),
            Stage(False, 6, 1, 160, 9, 0.25),
            Stage(False, 6, 2, 256, 15, 0.25),
        ),
        head=1280,
        dropout=0.2,
    ),
}

DEFAULT_SIZE = "b0"


class ConvBnAct(nn.Sequential):
    """Convolution, batch norm, and SiLU (or no activation for a projection)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global pool, squeeze, SiLU, excite, sigmoid gate."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class FusedMBConv(nn.Module):
    """Fused-MBConv: 3x3 expansion conv (stride here), then 1x1 projection; residual when shapes match.

    With expansion 1 the block is a single 3x3 conv-BN-SiLU, as in the paper's first stage.
    """

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand == 1:
            self.body: nn.Module = ConvBnAct(cin, cout, 3, stride)
        else:
            self.body = nn.Sequential(ConvBnAct(cin, mid, 3, stride), ConvBnAct(mid, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        result: torch.Tensor = x + y if self.residual else y
        return result


class MBConv(nn.Module):
    """MBConv: 1x1 expansion, 3x3 depthwise (stride here), squeeze-excitation, 1x1 projection."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, se: float) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = [
            ConvBnAct(cin, mid, 1),
            ConvBnAct(mid, mid, 3, stride, groups=mid),
        ]
        if se > 0:
            layers.append(SqueezeExcite(mid, max(1, int(cin * se))))
        layers.append(ConvBnAct(mid, cout, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        result: torch.Tensor = x + y if self.residual else y
        return result


class EfficientNetV2(nn.Module):
    """EfficientNetV2 with a one-channel stem and a single-logit head (low-certainty log-odds)."""

    def __init__(self, size: str = DEFAULT_SIZE, in_channels: int = 1) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown EfficientNetV2 size {size!r}; one of {sorted(SIZES)}")
        cfg = SIZES[size]
        self.size = size
        self.stem = ConvBnAct(in_channels, cfg.stem, 3, 2)
        blocks: list[nn.Module] = []
        cin = cfg.stem
        for stage in cfg.stages:
            for i in range(stage.layers):
                stride = stage.stride if i == 0 else 1
                if stage.fused:
                    blocks.append(FusedMBConv(cin, stage.channels, stage.expand, stride))
                else:
                    blocks.append(MBConv(cin, stage.channels, stage.expand, stride, stage.se))
                cin = stage.channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBnAct(cin, cfg.head, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.head, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N,) logits."""
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(x.mean((2, 3)), 1)
        result: torch.Tensor = self.classifier(self.dropout(x)).squeeze(1)
        return result


def build_net(size: str = DEFAULT_SIZE) -> EfficientNetV2:
    """A freshly initialised network of the named size."""
    return EfficientNetV2(size)


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
