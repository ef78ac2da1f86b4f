"""mmexp: config-driven experiments for multimodal image generation and repair."""

__version__ = "0.1.0"

from mmexp.config import register_resolvers as _register_resolvers

_register_resolvers()  # ${mmexp.wandb_offline:} and friends, wherever configs are composed


def load(ckpt_path, device=None, overrides=()):
    """A trained model from its checkpoint alone, for inference: ``mmexp.load(CKPT).generate(prompts, n=4)``
    (see :class:`mmexp.pipeline.Pipeline`)."""
    from mmexp.pipeline import load as _load

    return _load(ckpt_path, device=device, overrides=overrides)
