"""DnCNN: a residual denoiser, and the port of SCICO's trained DnCNN weights.

Zhang, Zuo, Chen, Meng & Zhang, "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image
Denoising", IEEE TIP 26(7), 2017: ``conv+ReLU -> (conv+BN+ReLU) x (depth - 2) -> conv`` predicts the noise,
and the output is the input minus it. Trained blind over a range of noise levels it is the paper's DnCNN-B.

:func:`scico_dncnn` loads the weights that the PyPI package ``scico`` ships (``scico/data/flax/dncnn*.mpk``,
Flax msgpack; grey images in [0, 1]) into this network, without JAX (see :func:`read_flax_msgpack`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmexp.errors import ConfigError, MissingDependencyError, WeightsNotFoundError


class DnCNN(nn.Module):
    """DnCNN: ``x - f(x)`` where ``f`` estimates the noise.

    Args:
        channels (int): image channels (1 grey, 3 RGB). Default: 3.
        depth (int): conv layers (the paper's 17 for a known sigma, 20 for blind DnCNN-B). Default: 17.
        num_feat (int): feature channels. Default: 64.
        bias (bool): biases in the convs (the paper's; SCICO's have none, their BatchNorm carries the shift).
            Default: True.
        padding_mode (str): ``zeros`` (the paper's) or ``circular`` (SCICO's). Default: ``zeros``.
        bn_eps (float): BatchNorm epsilon. Default: 1e-5.

    Input and output ``[B, channels, H, W]``, any ``H, W``, in the value range the network was trained on
    (mmexp trains on [-1, 1]; SCICO's weights expect [0, 1]: :class:`ScaledDenoiser` converts).
    """

    size_multiple = 1

    def __init__(self, channels: int = 3, depth: int = 17, num_feat: int = 64, bias: bool = True,
                 padding_mode: str = "zeros", bn_eps: float = 1e-5) -> None:
        super().__init__()
        if depth < 3:
            raise ConfigError(f"DnCNN: depth must be >= 3, got {depth}")
        if padding_mode not in ("zeros", "circular", "reflect", "replicate"):
            raise ConfigError(f"DnCNN: unknown padding_mode {padding_mode!r}")
        self.in_channels = self.out_channels = int(channels)
        self.upscale = 1

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, 1, 1, bias=bias, padding_mode=padding_mode)

        layers: list[nn.Module] = [conv(channels, num_feat), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [conv(num_feat, num_feat), nn.BatchNorm2d(num_feat, eps=bn_eps), nn.ReLU(inplace=True)]
        layers.append(conv(num_feat, channels))
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.layers(x)


class ScaledDenoiser(nn.Module):
    """Runs a denoiser trained on another value range, and grey weights on colour images channel by channel.

    Args:
        network (nn.Module): the denoiser (e.g. :class:`DnCNN`), ``channels`` 1 or as the images.
        value_range (tuple[float, float]): the range the network was trained on; mmexp's images are in
            [-1, 1]. Default: (0, 1).
        channels (int): channels of the images this module takes (3: a grey network denoises R, G and B
            independently, as SCICO applies its grey DnCNN to colour images). Default: 3.
    """

    size_multiple = 1
    upscale = 1

    def __init__(self, network: nn.Module, value_range: tuple[float, float] = (0.0, 1.0), channels: int = 3) -> None:
        super().__init__()
        self.network = network
        self.low, self.high = (float(v) for v in value_range)
        self.in_channels = self.out_channels = int(channels)
        net_ch = int(getattr(network, "in_channels", channels))
        if net_ch not in (1, channels):
            raise ConfigError(f"ScaledDenoiser: a {net_ch}-channel network cannot denoise {channels}-channel images")
        self.per_channel = net_ch == 1 and channels > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = (x + 1) / 2 * (self.high - self.low) + self.low
        if self.per_channel:
            y = y.reshape(b * c, 1, h, w)
        y = self.network(y)
        return ((y.reshape(b, c, h, w) - self.low) / (self.high - self.low)) * 2 - 1


# ------------------------------------------------------------------------------------------ SCICO's weights
#: SCICO's variants: layers and the noise level (std on [0, 1] data) each was trained for ("N" variants take
#: sigma as a second input channel and are not ported)
SCICO_VARIANTS = {f"{d}{k}": (int(d), s) for d in ("6", "17") for k, s in (("L", 0.06), ("M", 0.10), ("H", 0.20))}


def read_flax_msgpack(path: str | os.PathLike) -> dict:
    """A Flax ``serialization.msgpack_serialize`` file as nested dicts of NumPy arrays, without JAX/Flax.

    Flax writes arrays as msgpack extension type 1 holding a packed ``(shape, dtype name, raw bytes)``
    (C order); other extension types (complex scalars, ...) do not occur in weight files and are refused.
    """
    try:
        import msgpack
    except ImportError:
        raise MissingDependencyError("reading SCICO's DnCNN weights needs msgpack: pip install msgpack") from None

    def ext_hook(code: int, data: bytes) -> np.ndarray:
        if code != 1:
            raise ValueError(f"{path}: unsupported Flax msgpack extension type {code}")
        shape, dtype, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape).copy()

    with open(path, "rb") as f:
        return msgpack.unpackb(f.read(), ext_hook=ext_hook, raw=False, strict_map_key=False)


def scico_weights_file(variant: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """``dncnn<variant>.mpk`` in ``weights_dir`` or else in the installed ``scico`` package (found without
    importing it, which would import JAX)."""
    name = f"dncnn{variant}.mpk"
    if weights_dir is not None:
        path = Path(os.path.expanduser(str(weights_dir))) / name
    else:
        spec = importlib.util.find_spec("scico")
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFoundError(
                f"SCICO's DnCNN weights ({name}) ship with the PyPI package scico, which is not installed: "
                "`pip install scico`, or without its dependencies `pip download scico --no-deps` and unzip the "
                "wheel, then set weights_dir=<unzipped>/scico/data/flax")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "flax" / name
    if not path.is_file():
        raise WeightsNotFoundError(f"SCICO DnCNN weights not found at {path}")
    return path


def scico_dncnn(variant: str = "17M", weights_dir: str | os.PathLike | None = None) -> DnCNN:
    """SCICO's trained grey DnCNN (``variant`` of :data:`SCICO_VARIANTS`) as a :class:`DnCNN` on [0, 1] images.

    Layout: Flax convs are ``[kh, kw, in, out]`` (HWIO) and become ``[out, in, kh, kw]``; no conv biases;
    ``BatchNorm_0`` ``scale``/``bias`` and ``batch_stats`` ``mean``/``var`` become the BatchNorm's
    weight/bias/running_mean/running_var (eps 1e-5, evaluated with running statistics as SCICO's
    ``train=False``); convolutions pad circularly as SCICO's.
    """
    if variant not in SCICO_VARIANTS:
        raise ConfigError(f"unknown SCICO DnCNN variant {variant!r}; choose one of {sorted(SCICO_VARIANTS)}")
    path = scico_weights_file(variant, weights_dir)
    tree = read_flax_msgpack(path)
    params, stats = tree["params"], tree["batch_stats"]
    depth = SCICO_VARIANTS[variant][0]
    net = DnCNN(channels=1, depth=depth, num_feat=64, bias=False, padding_mode="circular")
    convs = [m for m in net.layers if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.layers if isinstance(m, nn.BatchNorm2d)]
    flax_convs = [params["conv_start"]["kernel"]] + [params[f"ConvBNBlock_{i}"]["Conv_0"]["kernel"]
                                                     for i in range(depth - 2)] + [params["conv_end"]["kernel"]]
    with torch.no_grad():
        for conv, kernel in zip(convs, flax_convs):
            weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            if weight.shape != conv.weight.shape:
                raise ConfigError(f"{path}: kernel of shape {tuple(weight.shape)} where DnCNN has "
                                  f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(weight)
        for i, bn in enumerate(norms):
            p, s = params[f"ConvBNBlock_{i}"]["BatchNorm_0"], stats[f"ConvBNBlock_{i}"]["BatchNorm_0"]
            bn.weight.copy_(torch.from_numpy(p["scale"]))
            bn.bias.copy_(torch.from_numpy(p["bias"]))
            bn.running_mean.copy_(torch.from_numpy(s["mean"]))
            bn.running_var.copy_(torch.from_numpy(s["var"]))
    return net.eval()


def scico_denoiser(variant: str = "17M", channels: int = 3, weights_dir: str | os.PathLike | None = None
                   ) -> ScaledDenoiser:
    """SCICO's DnCNN ``variant`` on mmexp's [-1, 1] images of ``channels`` channels (colour: per channel)."""
    return ScaledDenoiser(scico_dncnn(variant, weights_dir), (0.0, 1.0), channels)
