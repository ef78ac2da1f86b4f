"""A tiny paired dataset of real photo crops for restoration tests (test helper, not installed).

The model tests get ``input``/``target`` from the dataset itself, so they check the restoration models alone on real
photos: ``input`` is a torch antialiased bicubic downscale of the crop (SR) and/or the crop plus Gaussian noise
drawn from the item's index (denoising). Real runs use the package's degradations (``degradation=...``); the
tests with them are in test_restoration_integration.py.
"""

from __future__ import annotations

import numpy as np
import skimage.data as skd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict
from torch.utils.data import Dataset

#: photos per split: never the same photo in two splits
PHOTOS = {"train": ("astronaut", "rocket", "immunohistochemistry"), "val": ("chelsea",), "test": ("coffee",)}


class PairedCrops(Dataset):
    """Crops ``[3, image_size, image_size]`` of skimage photos with ``input``/``target`` pairs.

    Args: split; image_size (crop side); scale (input = bicubic down by it); sigma (noise std, grey levels of
    255, added to the input); n (items); seed.
    """

    provides = ("image", "index", "input", "target")

    def __init__(self, split: str, image_size: int = 32, scale: int = 1, sigma: float = 0.0, n: int = 16,
                 seed: int = 0) -> None:
        self.images = [np.asarray(getattr(skd, name)()) for name in PHOTOS[split]]
        self.size, self.scale, self.sigma, self.n = image_size, scale, float(sigma), n
        self.seed = seed + {"train": 0, "val": 1000, "test": 2000}[split]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(self.seed + i)
        im = self.images[i % len(self.images)]
        y, x = rng.integers(0, im.shape[0] - self.size), rng.integers(0, im.shape[1] - self.size)
        crop = torch.from_numpy(np.ascontiguousarray(im[y: y + self.size, x: x + self.size, :3])).permute(2, 0, 1)
        image = crop.float() / 127.5 - 1
        inp = image
        if self.scale > 1:
            inp = F.interpolate(image[None], scale_factor=1 / self.scale, mode="bicubic", antialias=True,
                                align_corners=False)[0]
        if self.sigma:
            g = torch.Generator().manual_seed(self.seed + i)
            inp = inp + torch.randn(inp.shape, generator=g) * self.sigma * 2 / 255
        return {"image": image, "index": i, "input": inp, "target": image}


def use_paired_crops(cfg, image_size: int = 32, scale: int = 1, sigma: float = 0.0, n: int = 16):
    """Point a composed config's data at :class:`PairedCrops` (in place; returns cfg)."""
    with open_dict(cfg):
        cfg.data.dataset = OmegaConf.create({"_target_": "tests.restoration_data.PairedCrops", "_partial_": True,
                                             "image_size": image_size, "scale": scale, "sigma": sigma, "n": n})
        cfg.data.image_size = image_size
        cfg.data.channels = 3
        cfg.data.num_classes = None  # unlabelled pairs (the shapes config declares its 4 shape classes)
    return cfg
