"""Virtual elastography networks: a UNet generator with a Transformer bottleneck, PatchGAN critics.

`ElastographyGenerator` (pix2pix UNet-256 layout, Isola et al. 2017, as in the open virtual
elastography study, with the seed study's Transformer stage):

    B-mode (1, 256, 256)
      stem   4x4 conv s2 ->  c0 x 128^2     \
      down   4x4 conv s2 ->  c1 x  64^2      |  each level: strided conv, InstanceNorm, LeakyReLU,
      down   4x4 conv s2 ->  c2 x  32^2      |  then a 3x3 conv refinement
      down   4x4 conv s2 ->  c3 x  16^2     /
      Transformer: `depth` pre-norm ViT blocks over the 16 x 16 tokens (learned position
                   embedding, interpolated for other grids): global context, e.g. the stiff
                   halo of a lesion and the strain shadow it casts over the whole field
      up     4x4 transposed conv s2, concatenate the skip, 3x3 conv (x3) -> c0 x 128^2
      up     4x4 transposed conv s2 -> c0 x 256^2
      heads  3x3 conv -> 3 (E-mode RGB), 3x3 conv -> 1 (mapped strain), tanh: [-1, 1]

`forward` returns the 4 channels stacked (RGB, strain) so the shared pix2pix loop
(`train.common.loops.fit_gan`) trains both heads with one L1. `TsukubaHead` (optional) reads the
transformer tokens and the generated strain and gives 5 logits (scores 1-5); it is trained after
the generator with the generator frozen.

`ServedGenerator` is the forward a backend serves (image, and the Tsukuba logits with the head).

`PatchDiscriminator`: a 3-layer PatchGAN (receptive field 46 px) on (B-mode, image) stacked;
`LesionCropDiscriminator` crops the lesion box (from a mask channel that only training batches
carry) with a margin, resamples it to 64 x 64 and judges it with its own PatchGAN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CHANNELS: tuple[int, int, int, int] = (24, 48, 96, 160)
N_TSUKUBA = 5
OUT_CHANNELS = 4  # E-mode RGB + mapped strain


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
               nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers)


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
        self.fuse = nn.Sequential(
            nn.Conv2d(cout + cskip, cout, 3, 1, 1, bias=False), nn.InstanceNorm2d(cout, affine=True),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.fuse(torch.cat([self.up(x), skip], dim=1))
        return result


class TransformerStage(nn.Module):
    """Pre-norm Transformer encoder blocks over the bottleneck grid, learned position embedding.

    The blocks are torch's `nn.TransformerEncoderLayer` (multi-head self-attention + GELU MLP,
    the ViT block): MONAI's `TransformerBlock` needs `einops`, which this environment lacks.
    """

    def __init__(self, dim: int, depth: int, heads: int, grid: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.pos = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            [nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=2 * dim, dropout=0.0,
                                        activation="gelu", batch_first=True, norm_first=True)
             for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pos = self.pos if (h, w) == (self.grid, self.grid) else F.interpolate(
            self.pos, size=(h, w), mode="bilinear", align_corners=False)
        tokens = (x + pos).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        result: torch.Tensor = x + tokens.transpose(1, 2).reshape(n, c, h, w)
        return result


class TsukubaHead(nn.Module):
    """5 logits (Tsukuba scores 1-5) from the bottleneck tokens and the generated strain map."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(dim + 1, hidden, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(2 * hidden, N_TSUKUBA)

    def forward(self, tokens: torch.Tensor, strain: torch.Tensor) -> torch.Tensor:
        # the grid as plain ints: an export traces a fixed image size (only the batch axis is
        # dynamic), and ONNX has no adaptive pooling to a size computed in the graph
        s = F.adaptive_avg_pool2d(strain, (int(tokens.shape[-2]), int(tokens.shape[-1])))
        f = self.conv(torch.cat([tokens, s], dim=1))
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        result: torch.Tensor = self.fc(pooled)
        return result


class ElastographyGenerator(nn.Module):
    """B-mode (N, 1, H, W) in [-1, 1] -> (N, 4, H, W): E-mode RGB and mapped strain in [-1, 1]."""

    def __init__(self, channels: Sequence[int] = DEFAULT_CHANNELS, depth: int = 2, heads: int = 4,
                 tsukuba: bool = True) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.channels = tuple(channels)
        self.stem = nn.Sequential(nn.Conv2d(1, c0, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(c0, c0, 3, 1, 1, bias=False),
                                  nn.InstanceNorm2d(c0, affine=True), nn.LeakyReLU(0.2, inplace=True))
        self.down1, self.down2, self.down3 = _down(c0, c1), _down(c1, c2), _down(c2, c3)
        self.transformer = TransformerStage(c3, depth, heads)
        self.up3, self.up2, self.up1 = _Up(c3, c2, c2), _Up(c2, c1, c1), _Up(c1, c0, c0)
        self.final = nn.Sequential(nn.ConvTranspose2d(c0, c0, 4, 2, 1), nn.ReLU(inplace=True))
        self.rgb_head = nn.Conv2d(c0, 3, 3, 1, 1)
        self.strain_head = nn.Conv2d(c0, 1, 3, 1, 1)
        self.tsukuba = TsukubaHead(c3) if tsukuba else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        b = self.transformer(self.down3(s2))
        return s0, s1, s2, b

    def decode(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        s0, s1, s2, b = feats
        y = self.final(self.up1(self.up2(self.up3(b, s2), s1), s0))
        return torch.tanh(torch.cat([self.rgb_head(y), self.strain_head(y)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"input sides must be multiples of 16, got {tuple(x.shape[-2:])}")
        return self.decode(self.encode(x))

    def forward_with_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image (N, 4, H, W), Tsukuba logits (N, 5) or None without the head)."""
        feats = self.encode(x)
        out = self.decode(feats)
        if self.tsukuba is None:
            return out, None
        return out, self.tsukuba(feats[-1], out[:, 3:4])


class ServedGenerator(nn.Module):
    """The generator's forward as a backend serves it: B-mode (N, 1, H, W) -> the image
    (N, 4, H, W) and, when the generator has the Tsukuba head, its logits (N, 5) as well."""

    def __init__(self, generator: ElastographyGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out, logits = self.generator.forward_with_score(x)
        return out if logits is None else (out, logits)


class PatchDiscriminator(nn.Module):
    """A 3-layer PatchGAN: a logit per overlapping 46 x 46 patch."""

    def __init__(self, in_channels: int, base: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(base, 2 * base, 4, 2, 1, bias=False), nn.InstanceNorm2d(2 * base, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * base, 4 * base, 4, 2, 1, bias=False), nn.InstanceNorm2d(4 * base, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * base, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.net(x)
        return result


class WholeImageDiscriminator(nn.Module):
    """PatchGAN on (B-mode, image); drops the lesion-mask channel training inputs carry."""

    def __init__(self, src_channels: int = 2, base: int = 32) -> None:
        super().__init__()
        self.src_channels = src_channels
        self.patch = PatchDiscriminator(1 + OUT_CHANNELS, base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.patch(torch.cat([x[:, :1], x[:, self.src_channels :]], dim=1))
        return result


def lesion_boxes(mask: torch.Tensor, margin: float = 0.25, min_frac: float = 0.12) -> torch.Tensor:
    """(N, 4) boxes (x0, y0, x1, y1) in [-1, 1] around each mask, widened by `margin`; the central
    half of the image where a mask is empty."""
    n, _, h, w = mask.shape
    boxes = torch.tensor([[-0.5, -0.5, 0.5, 0.5]], dtype=torch.float32).repeat(n, 1)
    for i in range(n):
        ys, xs = torch.nonzero(mask[i, 0] > 0.5, as_tuple=True)
        if ys.numel() == 0:
            continue
        x0, x1 = xs.min().item() / (w - 1) * 2 - 1, xs.max().item() / (w - 1) * 2 - 1
        y0, y1 = ys.min().item() / (h - 1) * 2 - 1, ys.max().item() / (h - 1) * 2 - 1
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = max((x1 - x0) / 2, (y1 - y0) / 2, min_frac) * (1 + margin)
        boxes[i] = torch.tensor([cx - half, cy - half, cx + half, cy + half])
    return boxes.to(mask.device)


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box (normalised coordinates) to size x size (differentiable in x)."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / 2
    theta[:, 0, 2] = (boxes[:, 2] + boxes[:, 0]) / 2
    theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / 2
    theta[:, 1, 2] = (boxes[:, 3] + boxes[:, 1]) / 2
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class LesionCropDiscriminator(nn.Module):
    """PatchGAN on the lesion crop of (B-mode, image); the box comes from the mask channel 1."""

    def __init__(self, src_channels: int = 2, base: int = 32, crop: int = 64) -> None:
        super().__init__()
        self.src_channels, self.crop = src_channels, crop
        self.patch = PatchDiscriminator(1 + OUT_CHANNELS, base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes = lesion_boxes(x[:, 1:2].detach())
        content = torch.cat([x[:, :1], x[:, self.src_channels :]], dim=1)
        result: torch.Tensor = self.patch(crop_boxes(content, boxes, self.crop))
        return result


class TrainingGenerator(nn.Module):
    """The generator as `fit_gan` drives it: inputs carry (B-mode, lesion mask); it sees B-mode."""

    def __init__(self, generator: ElastographyGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.generator(x[:, :1])
        return result


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
