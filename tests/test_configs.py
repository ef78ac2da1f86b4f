"""Every config composes; every experiment composes; unknown options list the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

import mmexp
from mmexp.config import build
from mmexp.errors import ConfigError
from tests.conftest import compose_cfg

CONF = Path(mmexp.__file__).parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_groups_exist():
    for group in ("model", "data", "loss", "trainer", "logger", "callbacks", "paths", "hydra", "experiment",
                  "debug", "hparams_search", "metrics", "degradation"):
        assert (CONF / group).is_dir(), group
    assert {"dcgan", "vae", "vqvae", "cgan", "text_gan"} <= set(options("model"))
    assert {"gan_bce", "gan_hinge", "wgan_gp", "vae", "vqvae", "l1", "charbonnier", "l1_perceptual", "cgan_hinge",
            "text_gan", "text_gan_dfgan"} <= set(options("loss"))
    assert {"shapes", "digits", "fashion_mnist", "mnist", "cifar10", "celeba", "folder"} <= set(options("data"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))


def test_default_config(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert cfg.task == "train" and cfg.model._target_.endswith("GAN")
    assert cfg.data.dataset._target_.endswith("ShapesDataset")
    assert cfg.model.generator.image_size == cfg.data.image_size


@pytest.mark.parametrize("group", ["model", "data", "degradation", "loss", "trainer", "logger", "callbacks", "metrics", "debug",
                                   "hparams_search"])
def test_every_option_composes(tmp_path, group):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if (group, option) in (("data", "folder"), ("data", "paired"), ("data", "aligned"), ("degradation", "file")):
            overrides.append(f"{group}.root={tmp_path}")
        cfg = compose_cfg(tmp_path, *overrides)
        # resolving catches bad interpolations
        from omegaconf import OmegaConf

        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(tmp_path, experiment):
    from omegaconf import OmegaConf

    cfg = compose_cfg(tmp_path, f"experiment={experiment}")
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("model", ["dcgan", "vae", "vqvae", "cgan", "text_gan"])
@pytest.mark.parametrize("data", ["shapes", "digits", "fashion_mnist", "cifar10", "celeba"])
def test_model_builds_for_data(tmp_path, model, data):
    cfg = compose_cfg(tmp_path, f"model={model}", f"data={data}")
    module = instantiate(cfg.model)
    module.check_data((cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
    if model == "cgan":  # labels: as many classes as the data declares
        assert module.conditioner.label_encoder.num_classes == cfg.data.num_classes


def test_unknown_option_lists_choices(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(tmp_path, "model=nope")
    message = str(err.value)
    for choice in ("dcgan", "vae", "vqvae"):
        assert choice in message


def test_optuna_search_sweeps_what_it_names(tmp_path):
    """Every parameter the Optuna example searches exists in the config it sweeps, and every
    choice it can draw composes into a model that builds."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(tmp_path, "hparams_search=optuna_dcgan")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    for key, space in cfg.hydra.sweeper.params.items():
        assert OmegaConf.select(cfg, key) is not None, key
        if not space.startswith("choice("):
            continue
        for value in (v.strip() for v in space[len("choice("):-1].split(",")):
            drawn = compose_cfg(tmp_path, "hparams_search=optuna_dcgan", f"{key}={value}")
            build(drawn.model)
    assert cfg.optimized_metric == "val/fid"


@pytest.mark.parametrize("degradation, border", [("bicubic_x2", 2), ("bicubic_x3", 3), ("bicubic_x4", 4),
                                                 ("bicubic_x4_noise", 4), ("classic_x4", 4), ("second_order_x4", 4),
                                                 ("gaussian_noise", 0), ("box", 0)])
def test_sr_protocol_crops_the_degradations_scale_also_inside_pipelines(tmp_path, degradation, border):
    # metrics=sr removes `scale` pixels at every side (BasicSR's crop_border); a pipeline (Compose, OneOf) has no
    # top-level `scale`, and its border was 0
    cfg = compose_cfg(tmp_path, "data=photos", "model=msrresnet", "metrics=sr", f"degradation={degradation}")
    assert cfg.metrics.crop_border == border
    cfg = compose_cfg(tmp_path, "data=photos", "model=msrresnet", "metrics=sr", "degradation=classic_x4",
                      "degradation.stages.down.scale=2")
    assert cfg.metrics.crop_border == 2


def test_degradation_scale_refuses_options_of_different_scales():
    from mmexp.config import degradation_scale
    down = "mmexp.degradations.Downsample"
    assert degradation_scale(None) == 0
    assert degradation_scale({"_target_": "x.Compose", "stages": [{"_target_": down, "scale": 2},
                                                                    {"_target_": down, "scale": 3}]}) == 3
    with pytest.raises(ConfigError, match=r"different factors \[2, 4\]"):
        degradation_scale({"_target_": "x.OneOf", "options": {"a": {"_target_": down, "scale": 2},
                                                              "b": {"_target_": down, "scale": 4}}})
