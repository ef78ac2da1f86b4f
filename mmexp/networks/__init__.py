"""Networks: plain ``nn.Module``s that know nothing of training (one network per file)."""

from mmexp.networks.autoencoder import Decoder, Encoder, ResidualBlock
from mmexp.networks.cgan import ConditionalGenerator, MatchingAwareDiscriminator, ProjectionDiscriminator
from mmexp.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from mmexp.networks.vae import GaussianDecoder, GaussianEncoder
from mmexp.networks.vqvae import QuantizerOutput, VectorQuantizer

__all__ = [
    "DCGANGenerator", "DCGANDiscriminator", "ConditionalGenerator", "ProjectionDiscriminator",
    "MatchingAwareDiscriminator", "Encoder", "Decoder", "ResidualBlock",
    "GaussianEncoder", "GaussianDecoder", "VectorQuantizer", "QuantizerOutput",
]
