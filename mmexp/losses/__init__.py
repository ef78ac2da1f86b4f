"""Losses shared by the models."""

from mmexp.losses.gan import GANLoss

__all__ = ["GANLoss"]
