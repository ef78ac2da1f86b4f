"""pix2pix's U-Net generator (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks",
CVPR 2017; after Ronneberger et al., "U-Net", MICCAI 2015): an encoder-decoder whose decoder layer ``i`` also sees
encoder layer ``i`` (skip connections), so the low-level structure shared by input and output (edges, layout)
crosses the bottleneck untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.networks.dcgan import dcgan_init

NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "instance":
        return [nn.InstanceNorm2d(channels)]
    return []


class UNetGenerator(nn.Module):
    """pix2pix's U-Net: ``[B, in_channels, H, W] -> [B, out_channels, H, W]`` in [-1, 1] (tanh).

    ``num_downs`` 4x4 stride-2 convs halve the image down to ``H / 2^num_downs`` (encoder C64-C128-C256-C512-C512...
    with ``base_channels=64``: ``base_channels * min(2^i, 8)``, LeakyReLU(0.2), no normalisation on the first
    and the innermost), then as many 4x4 stride-2 transposed convs double it back (ReLU), each taking the
    previous decoder output concatenated with the encoder output of the same size. The paper's 256 px
    generator has ``num_downs=8`` (a 1x1 bottleneck); 5 suits 32 px images and 6 suits 64 px.

    Args:
        in_channels (int): input channels. Default: 3.
        out_channels (int): output channels. Default: 3.
        base_channels (int): channels of the first encoder layer. Default: 64.
        num_downs (int): down-samplings, >= 2; ``H`` and ``W`` must be multiples of ``2^num_downs``
            (``size_multiple``; ``task=restore`` pads to it). Default: 8.
        norm (str): ``"batch"`` (pix2pix), ``"instance"`` or ``"none"``. Default: "batch".
        dropout (float): dropout probability in the decoder layers right after the innermost one (pix2pix's noise:
            "dropout, applied on several layers of our generator"). Default: 0.5.
        dropout_layers (int): how many decoder layers, after the innermost one, get dropout (the reference
            implementation's three at 256 px). Default: 3.

    pix2pix keeps dropout (and batch statistics) at test time; here evaluation runs in eval mode, so the output is
    deterministic. Weights start as N(0, 0.02) (pix2pix's init).
    """

    upscale = 1

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64, num_downs: int = 8,
                 norm: str = "batch", dropout: float = 0.5, dropout_layers: int = 3) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"UNetGenerator: norm must be one of {NORMS}, got {norm!r}")
        if int(num_downs) < 2:
            raise ConfigError(f"UNetGenerator: num_downs must be >= 2, got {num_downs}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"UNetGenerator: dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.num_downs = int(in_channels), int(out_channels), int(num_downs)
        self.size_multiple = 2 ** self.num_downs
        n = self.num_downs
        w = [base_channels * min(2 ** i, 8) for i in range(n)]
        # a conv followed by BatchNorm has no use for a bias (pix2pix's use_bias)
        bias = norm != "batch"
        down: list[nn.Module] = [nn.Conv2d(self.in_channels, w[0], 4, 2, 1, bias=True)]
        for i in range(1, n):
            innermost = i == n - 1
            # not in place: the encoder output it reads is also the skip to the decoder
            down.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(w[i - 1], w[i], 4, 2, 1, bias=bias or innermost),
                                      *([] if innermost else _norm(norm, w[i]))))
        up: list[nn.Module] = [nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(2 * w[0], self.out_channels, 4, 2, 1),
                                             nn.Tanh())]
        for i in range(1, n):
            cin = w[i] if i == n - 1 else 2 * w[i]  # the innermost decoder layer has no skip to concatenate
            layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, w[i - 1], 4, 2, 1, bias=bias), *_norm(norm, w[i - 1])]
            if dropout > 0 and n - 1 - dropout_layers <= i < n - 1:
                layers.append(nn.Dropout(dropout))
            up.append(nn.Sequential(*layers))
        self.down, self.up = nn.ModuleList(down), nn.ModuleList(up)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ShapeMismatchError(f"UNetGenerator takes {self.in_channels}-channel inputs, got {x.shape[1]}")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ShapeMismatchError(
                f"UNetGenerator with num_downs={self.num_downs} needs sides that are multiples of "
                f"{self.size_multiple}, got {x.shape[-2]}x{x.shape[-1]}; pad the image or lower num_downs")
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for i in range(self.num_downs - 2, -1, -1):
            x = self.up[i](torch.cat([skips[i], x], 1))
        return x
