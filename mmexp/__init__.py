"""mmexp: config-driven experiments for multimodal image generation and repair."""

__version__ = "0.1.0"

from mmexp.config import register_resolvers as _register_resolvers

_register_resolvers()  # ${mmexp.wandb_offline:} and friends, wherever configs are composed
