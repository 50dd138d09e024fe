"""CycleGAN's networks, small for grey glyphs on CPU: a U-shaped ResNet generator and a PatchGAN discriminator."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, instance norm (CycleGAN's), ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a skip connection (CycleGAN's ResnetBlock)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """Image [n, 1, H, W] in [-1, 1] -> an image of the same shape in [-1, 1].

    CycleGAN's ResNet generator made cheap for CPU: a full-resolution stem of `channels // 2`, two stride-2
    convolutions (to `channels`, then `2 * channels` at a quarter of the side), `blocks` residual blocks there, and
    two upsampling steps (nearest upsample, concatenation with the encoder's features of that size as in a U-Net,
    a 3x3 convolution), then a 3x3 head with tanh. The skips keep the glyph's shape at full resolution while the
    blocks redraw its strokes. H and W must be multiples of 4.
    """

    def __init__(self, channels: int = 16, blocks: int = 3):
        super().__init__()
        if channels < 2 or blocks < 0:
            raise ValueError(f"generator: channels >= 2 and blocks >= 0, got {channels} and {blocks}")
        half = channels // 2
        self.stem = _conv(1, half)
        self.down1 = _conv(half, channels, stride=2)
        self.down2 = _conv(channels, 2 * channels, stride=2)
        self.blocks = nn.Sequential(*[ResidualBlock(2 * channels) for _ in range(blocks)])
        self.up2 = _conv(3 * channels, channels)
        self.up1 = _conv(channels + half, half)
        self.head = nn.Conv2d(half, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        y = self.blocks(self.down2(s1))
        y = self.up2(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), s1], 1))
        y = self.up1(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), s0], 1))
        return torch.tanh(self.head(y))


class Discriminator(nn.Module):
    """PatchGAN: image [n, 1, H, W] -> a grid of real/fake scores [n, 1, H / 2**layers, W / 2**layers], each seeing
    a patch of the image (4x4 stride-2 convolutions, leaky ReLU, instance norm after the first)."""

    def __init__(self, channels: int = 16, layers: int = 3):
        super().__init__()
        if channels < 1 or layers < 1:
            raise ValueError(f"discriminator: channels >= 1 and layers >= 1, got {channels} and {layers}")
        parts: list[nn.Module] = [nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        c = channels
        for _ in range(layers - 1):
            parts += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(2 * c, affine=True),
                      nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        parts += [nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
