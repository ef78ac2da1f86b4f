"""Comparison figures of the restoration experiments (experiments/README.md): a crop of a test photo the model
never saw, as ``input | classical peer | mmexp | ground truth``, each panel titled with its PSNR on the crop.

    python experiments/figures.py sr RUN/checkpoints/last.ckpt docs/sr_x2_photos_cpu.png
    python experiments/figures.py denoise RUN/checkpoints/last.ckpt docs/denoise_photos_cpu.png

The inputs are made exactly as in training (MATLAB-style bicubic x2 / Gaussian noise sigma 25, seed 0); the peers
are mmexp's (``Bicubic``, ``NLMeans`` with the true sigma).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import mmexp
from mmexp.data.photos import package_dir
from mmexp.degradations import Downsample, GaussianNoise
from mmexp.metrics.restoration import prepare, psnr_per_image
from mmexp.models.baselines import Bicubic, Identity, NLMeans
from mmexp.restore import read_image

# the quokka of imgaug's wheel: in the test split of data=photos (seed 42), never trained on
PHOTO = ("imgaug", "quokka.jpg")
CROP = (210, 340, 160)  # top, left, side (HR pixels)


def crop_of_test_photo() -> torch.Tensor:
    root = package_dir(PHOTO[0])
    if root is None:
        raise SystemExit(f"{PHOTO[0]} is not installed (pip install 'mmexp[photos]')")
    x = read_image(root / PHOTO[1], 3)
    x = x if x.dim() == 4 else x[None]
    top, left, s = CROP
    return x[:, :, top: top + s, left: left + s]


def panel(x: torch.Tensor, size: int, title: str) -> Image.Image:
    x = F.interpolate(x, size=(size, size), mode="nearest") if x.shape[-1] != size else x
    a = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    im = Image.new("RGB", (size, size + 18), "white")
    im.paste(Image.fromarray(a), (0, 18))
    ImageDraw.Draw(im).text((3, 3), title, fill="black")
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["sr", "denoise"])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    args = ap.parse_args()
    torch.manual_seed(0)
    hr = crop_of_test_photo()
    if args.task == "sr":
        batch = Downsample(scale=2)({"image": hr}, seeds=[0])
        peer, peer_name, y, crop = Bicubic(scale=2), "bicubic", True, 2
    else:
        batch = GaussianNoise(sigma=25)({"image": hr}, seeds=[0])
        peer, peer_name, y, crop = NLMeans(sigma=25), "NL-means", False, 0
    x = batch["input"]
    mine = mmexp.load(args.ckpt, device="cpu").restore(x)
    shown = Identity().restore(x)
    side = hr.shape[-1] * 2

    def score(img: torch.Tensor) -> str:
        if img.shape != hr.shape:
            return ""
        return f" {psnr_per_image(prepare(img, y, crop), prepare(hr, y, crop)).item():.2f} dB"

    panels = [panel(shown, side, ("LR x2 input" if args.task == "sr" else "noisy sigma 25") + score(shown)),
              panel(peer.restore(x), side, peer_name + score(peer.restore(x))),
              panel(mine, side, "mmexp" + score(mine)), panel(hr, side, "ground truth")]
    out = Image.new("RGB", (len(panels) * (side + 4) - 4, side + 18), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * (side + 4), 0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB); PSNR{' (Y, crop 2)' if y else ' (RGB)'} "
          "on the crop in the panel titles")


if __name__ == "__main__":
    main()
