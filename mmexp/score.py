"""Score two folders of images, like pytorch-fid's CLI::

    python -m mmexp.score REF_DIR TEST_DIR [--metrics fid,kid,is,pr,psnr,ssim,lpips] [--batch-size 64]
                          [--device cpu|cuda] [--y-channel] [--crop-border N] [--weights PATH]

Unpaired metrics (fid, kid, is, pr) compare the two sets (REF = real, TEST = generated; is uses TEST
only). Paired metrics (psnr, ssim, lpips/st_lpips) match files by their path relative to the folder,
without extension. The last line printed is one JSON object: ``{"metrics": {...}, "protocol": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(folder: Path) -> dict[str, Path]:
    """Images under ``folder`` (recursive), keyed by relative path without extension (sorted)."""
    if not folder.is_dir():
        raise SystemExit(f"error: not a directory: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return {str(p.relative_to(folder).with_suffix("")): p for p in files}


def load_image(path: Path) -> torch.Tensor:
    """An image file -> float [1, C, H, W] in [-1, 1] (C = 1 for grayscale, else RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L") if im.mode in ("L", "I;16", "I", "1") else im.convert("RGB")
        a = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(a.copy())
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    return (t.float() / 127.5 - 1).unsqueeze(0)


def _batches(paths, batch_size: int):
    """Consecutive images of equal shape stacked up to batch_size (Inception resizes each to 299)."""
    buf: list[torch.Tensor] = []
    for p in paths:
        x = load_image(p)
        if buf and (x.shape != buf[0].shape or len(buf) >= batch_size):
            yield torch.cat(buf)
            buf = []
        buf.append(x)
    if buf:
        yield torch.cat(buf)


def build_parser() -> argparse.ArgumentParser:
    from mmexp.metrics.suite import METRIC_CHOICES

    ap = argparse.ArgumentParser(prog="python -m mmexp.score", description=__doc__.split("\n\n")[0])
    ap.add_argument("ref", type=Path, help="folder of reference (real / target) images")
    ap.add_argument("test", type=Path, help="folder of test (generated / restored) images")
    ap.add_argument("--metrics", default="fid,kid", help=f"comma-separated, from: {','.join(METRIC_CHOICES)}")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--y-channel", action="store_true", help="psnr/ssim on BasicSR's Y channel")
    ap.add_argument("--crop-border", type=int, default=0, help="psnr/ssim: pixels cropped on each side")
    ap.add_argument("--weights", default=None, help="Inception weights (torch-fidelity layout)")
    ap.add_argument("--kid-subset-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2020)
    return ap


def main(argv=None) -> dict:
    from mmexp.errors import ConfigError, MMExpError
    from mmexp.metrics.suite import METRIC_CHOICES, MetricSuite, parse_metrics

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        metrics = parse_metrics(args.metrics)
    except ConfigError:
        bad = [m for m in args.metrics.split(",") if m.strip().lower() not in METRIC_CHOICES]
        ap.error(f"unknown metric(s) {', '.join(bad)}; choose from: {', '.join(METRIC_CHOICES)}")
    if not metrics:
        ap.error(f"no metric given; choose from: {', '.join(METRIC_CHOICES)}")
    device = torch.device(args.device)
    suite = MetricSuite(name="score", metrics=metrics, reference_split=str(args.ref), batch_size=args.batch_size,
                        weights_path=args.weights, y_channel=args.y_channel, crop_border=args.crop_border,
                        kid_subset_size=args.kid_subset_size, seed=args.seed)
    ref, test = list_images(args.ref), list_images(args.test)
    if not ref or not test:
        raise SystemExit(f"error: no images found in {args.ref if not ref else args.test}")
    try:
        if suite.generation_metrics:
            if suite.needs_real:
                for x in _batches(ref.values(), args.batch_size):
                    suite.update_real(x.to(device))
            for x in _batches(test.values(), args.batch_size):
                suite.update_fake(x.to(device))
        if suite.paired_metrics:
            common = sorted(set(ref) & set(test))
            if not common:
                raise SystemExit("error: paired metrics need files with the same names in both folders")
            if len(common) < max(len(ref), len(test)):
                logging.getLogger("mmexp.score").warning(
                    "paired metrics: %d matched names (%d ref, %d test files)", len(common), len(ref), len(test))
            for name in common:
                a, b = load_image(test[name]), load_image(ref[name])
                if a.shape != b.shape:
                    raise SystemExit(f"error: {name}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
                suite.update_pair(a.to(device), b.to(device))
        results = suite.compute()
    except MMExpError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    record = {"metrics": results, "protocol": suite.protocol}
    for k, v in results.items():
        print(f"{k}: {v:.6g}")
    print(json.dumps(record, default=str))
    return record


if __name__ == "__main__":
    main()
