"""LightningModules: own losses, optimizers, EMA and logging; networks are injected."""

from mmexp.models.base import GenerativeModule
from mmexp.models.cgan import ConditionalGAN
from mmexp.models.gan import GAN
from mmexp.models.vae import VAE
from mmexp.models.vqvae import VQVAE

__all__ = ["GenerativeModule", "GAN", "ConditionalGAN", "VAE", "VQVAE"]
