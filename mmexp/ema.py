"""Exponential moving average of a module's weights (e.g. the GAN generator).

Used for evaluation/sampling as in Karras et al. 2018 (ProGAN) and Yazıcı et al., "The
Unusual Effectiveness of Averaging in GAN Training", ICLR 2019.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmexp.errors import ConfigError


class EMA(nn.Module):
    """Holds ``module`` (a frozen deep copy of the source) whose parameters track the source's.

    Args:
        source (nn.Module): the trained module. It is *not* registered as a submodule (so it is
            not stored twice in a state_dict); assign the EMA as an attribute of the
            LightningModule that owns ``source`` so ``ema.module`` lands in its checkpoints.
        decay (float): ``ema = decay * ema + (1 - decay) * source``. Default: 0.999.
        start_step (int): before this step ``update`` copies the source instead of averaging.
            Default: 0.

    ``update(step)`` averages the parameters and copies the buffers (e.g. BatchNorm statistics,
    spectral-norm vectors). ``forward`` runs the averaged copy.
    """

    def __init__(self, source: nn.Module, decay: float = 0.999, start_step: int = 0) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay, self.start_step = float(decay), int(start_step)
        self.module = copy.deepcopy(source).requires_grad_(False)
        self._source = (source,)  # a tuple, so nn.Module does not register it
        self._cache: tuple | None = None  # see _pairs

    def _pairs(self) -> tuple[list, list, list]:
        """(EMA parameters, source parameters, [(EMA flat buffer tensor, source buffers), ...]), walked once: a
        module tree walk per step costs more host time than the update; ``_apply`` (``.to()``, ``.half()``) and
        :meth:`reset` walk again. The EMA's buffers live in one flat tensor per dtype (:class:`FlatBuffers`), so
        the source's are copied over with one ``cat`` and one ``where`` per dtype, not two kernels per buffer."""
        from mmexp.models.base import FlatBuffers  # mmexp.models imports this module

        if self._cache is None or not self._cache[3].intact():
            src = self._source[0]
            ema_b, src_b = list(self.module.buffers()), list(src.buffers())
            flat = FlatBuffers(ema_b)
            groups: dict[tuple, list] = {}
            for e, b in zip(ema_b, src_b):
                groups.setdefault((e.device, e.dtype), []).append(b)
            self._cache = (list(self.module.parameters()), list(src.parameters()),
                           list(zip(flat.flats, groups.values())), flat)
        return self._cache[:3]

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def update(self, step: int, ok: torch.Tensor | None = None) -> None:
        """Average the source's parameters into the EMA and copy its buffers. ``ok``: a device boolean; when
        false the EMA is left as it is (the source's update of this step was skipped), without a host sync."""
        ema_p, src_p, buffers = self._pairs()
        weight = 1.0 if step < self.start_step else 1.0 - self.decay
        if ema_p:
            torch._foreach_lerp_(ema_p, src_p, weight if ok is None else ok.to(ema_p[0].dtype) * weight)
        for flat, src_b in buffers:
            now = torch.cat([b.reshape(-1) for b in src_b])
            if ok is None:
                flat.copy_(now)
            else:
                torch.where(ok.to(flat.device), now, flat, out=flat)

    @torch.no_grad()
    def reset(self) -> None:
        """Copy the source's parameters and buffers (after the source's weights were replaced, e.g. by
        ``init_from``, so the average starts from them)."""
        self._cache = None
        for ema_t, src_t in zip([*self.module.parameters(), *self.module.buffers()],
                                [*self._source[0].parameters(), *self._source[0].buffers()]):
            ema_t.copy_(src_t)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, start_step={self.start_step}"
