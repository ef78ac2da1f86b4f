"""Vector quantiser of the VQ-VAE.

van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", NeurIPS 2017
(straight-through estimator, codebook + commitment loss; EMA codebook updates in its appendix),
Razavi, van den Oord & Vinyals, "Generating Diverse High-Fidelity Images with VQ-VAE-2",
NeurIPS 2019 (EMA updates), and dead-code restart from encoder outputs as in Dhariwal et al.,
"Jukebox" (2020); restarts drawn in proportion to the squared quantisation error, as k-means++ seeds its centres
(Arthur & Vassilvitskii, SODA 2007).

The encoder/decoder around it are :class:`mmexp.networks.autoencoder.Encoder` /
``Decoder`` with ``out_channels`` / ``in_channels`` equal to ``code_dim``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError


class QuantizerOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns.

    quantized: ``[B, D, H, W]`` codes, with straight-through gradient to the input.
    indices: ``[B, H, W]`` int64 code indices.
    commitment: scalar, ``mean((z - sg[e])^2)``: the commitment distance (gradient to the encoder).
    codebook: scalar, ``mean((sg[z] - e)^2)`` (gradient to the codebook), or ``None`` with EMA
        updates, where no loss trains the codebook. The VQ-VAE's loss weights both
        (:mod:`mmexp.losses.vq`).
    perplexity: scalar, ``exp(entropy)`` of this batch's code histogram (1 .. num_codes).
    usage: scalar, fraction of the codebook used in this batch.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor | None
    perplexity: torch.Tensor
    usage: torch.Tensor


#: how dead codes pick their replacement (``VectorQuantizer(restart_from=...)``)
RESTARTS = ("uniform", "error")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with straight-through gradients.

    Args:
        num_codes (int): codebook size K. Default: 512.
        code_dim (int): code dimension D (channels of the encoder output). Default: 64.
        ema (bool): update the codebook by exponential moving averages of the assigned encoder
            outputs (no gradient to the codebook, no codebook loss) instead of by the codebook
            loss ``||sg[z] - e||^2``. Default: False.
        decay (float): EMA decay of the code statistics (assignment counts, and with ``ema``
            the sums of assigned vectors). Default: 0.99.
        eps (float): Laplace smoothing of the EMA counts. Default: 1e-5.
        dead_code_threshold (float): a code whose EMA assignment count (vectors per batch) falls
            below this is dead and, at the next training forward, is replaced by a random
            encoder output of that batch (``torch.randint`` on the global torch RNG, so it is
            deterministic given the RNG state). 0 disables restarts. As the counts start at 0,
            the first training batch initialises the whole codebook from encoder outputs.
            Default: 1.0. (With ``ema`` keep restarts on: as in Sonnet's EMA quantiser, a
            code that is never assigned decays towards the zero vector.)
        restart_from (str): which encoder outputs replace dead codes: ``"uniform"``, any output of the
            batch with equal probability; ``"error"``, an output with probability proportional to its
            squared distance to its nearest code (k-means++'s seeding), so restarts go where the codebook
            fits worst. Where most outputs are alike (flat backgrounds beside a small object) uniform
            restarts mostly land on what is already coded and die again; ``"error"`` spends them on the
            rare detail (edges and corners). Default: ``"uniform"``.

    Buffers (saved in checkpoints): ``cluster_size`` [K] EMA assignment counts, ``embed_sum``
    [K, D] EMA sums of assigned vectors (used with ``ema``). ``embedding`` [K, D] is the codebook
    (a parameter; ``requires_grad=False`` with ``ema``).

    Statistics updates and restarts only happen in training mode, and are skipped (branch-free)
    for a batch with non-finite encoder outputs, so such a batch cannot corrupt the codebook.
    Under DDP the counts and sums are all-reduced and restart candidates are broadcast from
    rank 0, so the codebooks stay equal (not yet exercised by the tests).
    """

    def __init__(self, num_codes: int = 512, code_dim: int = 64, ema: bool = False,
                 decay: float = 0.99, eps: float = 1e-5,
                 dead_code_threshold: float = 1.0, restart_from: str = "uniform") -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"VectorQuantizer: decay must be in (0, 1), got {decay}")
        if restart_from not in RESTARTS:
            raise ConfigError(f"VectorQuantizer: restart_from={restart_from!r}; choose one of {RESTARTS}")
        self.restart_from = restart_from
        self.num_codes, self.code_dim = num_codes, code_dim
        self.ema, self.decay, self.eps = ema, decay, eps
        self.dead_code_threshold = dead_code_threshold
        weight = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        self.embedding = nn.Parameter(weight, requires_grad=not ema)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", torch.zeros(num_codes, code_dim))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        # a non-finite batch must not corrupt the codebook or its statistics (branch-free)
        finite = torch.isfinite(flat.detach()).all() if self.training else None
        # code assignment and the codebook's statistics in fp32 also under autocast (bf16-mixed): a bf16 distance
        # picks the wrong nearest code, and the fp32 statistics buffers cannot take bf16 updates
        no_autocast = torch.autocast(z.device.type, enabled=False)
        if self.training and self.dead_code_threshold > 0:
            with no_autocast:
                self._restart_dead_codes(flat.detach(), finite)
        with torch.no_grad(), no_autocast:
            fz = flat.detach().float()
            e = self.embedding.float()
            dist_ = fz.pow(2).sum(1, keepdim=True) - 2 * fz @ e.t() + e.pow(2).sum(1)
            indices = dist_.argmin(1)
            onehot = F.one_hot(indices, self.num_codes).type_as(fz)
            counts = onehot.sum(0)
        quantized = F.embedding(indices, self.embedding).view(b, h, w, d).permute(0, 3, 1, 2)
        commitment = F.mse_loss(z, quantized.detach())
        codebook = None if self.ema else F.mse_loss(quantized, z.detach())
        if self.training:
            with no_autocast:
                self._update_stats(counts, onehot, fz, finite)
        quantized = z + (quantized - z).detach()  # straight-through estimator
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        usage = (counts > 0).float().mean()
        return QuantizerOutput(quantized, indices.view(b, h, w), commitment, codebook, perplexity,
                               usage)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``[B, H, W]`` -> codes ``[B, D, H, W]``."""
        return F.embedding(indices, self.embedding).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def _update_stats(self, counts: torch.Tensor, onehot: torch.Tensor, flat: torch.Tensor,
                      finite: torch.Tensor) -> None:
        sums = onehot.t() @ flat if self.ema else None
        if _distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
                finite = torch.isfinite(sums).all()
        # torch.where, not a 0 lerp weight: 0 * NaN would still be NaN
        self.cluster_size.copy_(torch.where(finite, self.cluster_size.lerp(counts, 1 - self.decay),
                                            self.cluster_size))
        if self.ema:
            self.embed_sum.copy_(torch.where(finite, self.embed_sum.lerp(sums, 1 - self.decay),
                                             self.embed_sum))
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
            self.embedding.data.copy_(torch.where(finite, self.embed_sum / smoothed.unsqueeze(1),
                                                  self.embedding))

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, finite: torch.Tensor) -> None:
        """Replace codes with ``cluster_size < threshold`` by random rows of ``flat``.

        Branch-free (``torch.where``), so it needs no host-device sync."""
        dead = (self.cluster_size < self.dead_code_threshold) & finite
        if self.restart_from == "error":
            e = self.embedding.detach().float()
            fz = flat.float()
            err = (fz.pow(2).sum(1, keepdim=True) - 2 * fz @ e.t() + e.pow(2).sum(1)).amin(1).clamp_min(0)
            # an exactly coded batch (all errors 0) falls back to uniform draws; non-finite rows are never drawn
            err = torch.where(torch.isfinite(err), err, torch.zeros_like(err)) + 1e-12
            pick = torch.multinomial(err, self.num_codes, replacement=True)
        else:
            pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        candidates = flat[pick].to(self.embedding.dtype)
        if _distributed():
            dist.broadcast(candidates, 0)
        self.embedding.data.copy_(torch.where(dead[:, None], candidates, self.embedding))
        self.cluster_size.masked_fill_(dead, self.dead_code_threshold)
        self.embed_sum.copy_(torch.where(dead[:, None], candidates * self.dead_code_threshold,
                                         self.embed_sum))
