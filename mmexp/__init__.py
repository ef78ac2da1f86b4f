"""mmexp: config-driven experiments for multimodal image generation and repair."""

__version__ = "0.1.0"
