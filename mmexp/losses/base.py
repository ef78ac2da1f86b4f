"""A loss is a set of named, weighted terms: :class:`LossTerm` and :class:`LossSet`.

As in BasicSR's ``basic_loss.py`` every term is a small module carrying its own weight, and as in
LaMa's configs the set is a dictionary in the config, so an ablation is a config change
(``loss.terms.perceptual.weight=0.1``, ``+loss.terms.r1=...``, ``~loss.terms.kl``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from mmexp.errors import ConfigError

#: the two sides a term can act on: the trained model (a GAN's generator) and a GAN's discriminator
SIDES = ("model", "discriminator")


class LossTerm(nn.Module):
    """One weighted term of a loss.

    Args:
        weight (float): the term's weight in the total. Default: 1.0.

    A term computes its **unweighted** value; :class:`LossSet` multiplies by ``weight``. It acts on
    the trained model through ``forward(...)`` (for a GAN: the generator's loss) and/or on a GAN's
    discriminator through ``d_loss(...)``; a term defines one or both. The parameter names of
    these methods are the inputs the term takes (``pred``, ``target``, ``fake_logits``,
    ``discriminator``...), given by name by the model (see :meth:`LossSet.forward`). A method
    may return ``None`` to sit out a call (a lazy regulariser between its steps, a codebook loss
    with an EMA codebook): it then neither counts in the total nor is logged.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def sides(self) -> tuple[str, ...]:
        """The sides (of :data:`SIDES`) this term acts on: the methods its class defines."""
        cls = type(self)
        out = []
        if cls.forward is not nn.Module.forward:
            out.append("model")
        if getattr(cls, "d_loss", None) is not None:
            out.append("discriminator")
        return tuple(out)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class LossOutput(NamedTuple):
    """What :class:`LossSet` returns.

    total: scalar tensor, ``sum(weight * part)`` over the active terms (with its graph).
    parts: term name -> **unweighted**, detached scalar value of each active term (for logging).
    """

    total: torch.Tensor
    parts: dict[str, torch.Tensor]

    def named(self, prefix: str) -> dict[str, torch.Tensor]:
        """``parts`` keyed ``f"{prefix}/{name}"``, e.g. ``named("train/loss")``."""
        return {f"{prefix}/{name}": value for name, value in self.parts.items()}


def _params(fn: Any) -> tuple[list[str], list[str]]:
    """(required, optional) keyword parameter names of a bound method."""
    required, optional = [], []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        (required if p.default is p.empty else optional).append(p.name)
    return required, optional


class LossSet(nn.Module):
    """A loss made of named, weighted :class:`LossTerm` s.

    Args:
        terms (Mapping[str, LossTerm | None]): name -> term; a ``None`` entry is left out, so
            ``loss.terms.NAME=null`` drops a term from the command line (as does
            ``~loss.terms.NAME``). Names appear in the logs (``train/loss/NAME``).

    ``forward(**inputs)`` is the trained model's loss (a GAN's generator loss) over the terms that
    define ``forward``; ``d_loss(**inputs)`` a GAN discriminator's loss over the terms that define
    ``d_loss``. Both take every input the model has, by name, give each term the ones its method
    names (a term needing one the model does not provide raises :class:`ConfigError` naming it),
    and return a :class:`LossOutput`: the weighted total and the unweighted parts.
    """

    def __init__(self, terms: Mapping[str, LossTerm | None]) -> None:
        super().__init__()
        terms = {str(k): v for k, v in dict(terms).items() if v is not None}
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise ConfigError(f"LossSet: term {name!r} is a {type(term).__name__}, not a "
                                  "mmexp.losses.LossTerm; give it a _target_ naming a LossTerm")
            if not term.sides():
                raise ConfigError(f"LossSet: term {name!r} ({type(term).__name__}) defines "
                                  "neither forward nor d_loss")
        self.terms = nn.ModuleDict(terms)
        # side -> [(name, required inputs, optional inputs)], in the config's order
        self._plan: dict[str, list[tuple[str, list[str], list[str]]]] = {
            side: [(name, *_params(term.forward if side == "model" else term.d_loss))
                   for name, term in terms.items() if side in term.sides()]
            for side in SIDES}

    def names(self, side: str = "model") -> list[str]:
        """Names of the terms acting on ``side`` (one of :data:`SIDES`)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return [name for name, _, _ in self._plan[side]]

    def input_names(self, side: str = "model") -> set[str]:
        """Every input some term of ``side`` takes (required or optional)."""
        return {k for _, required, optional in self._plan[side] for k in (*required, *optional)}

    def forward(self, **inputs: Any) -> LossOutput:
        return self._evaluate("model", inputs)

    def d_loss(self, **inputs: Any) -> LossOutput:
        return self._evaluate("discriminator", inputs)

    def _evaluate(self, side: str, inputs: dict[str, Any]) -> LossOutput:
        if not self._plan[side]:
            raise ConfigError(f"LossSet: no term acts on the {side} (terms: "
                              f"{ {n: type(t).__name__ for n, t in self.terms.items()} })")
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name, required, optional in self._plan[side]:
            term = self.terms[name]
            missing = [k for k in required if k not in inputs]
            if missing:
                raise ConfigError(
                    f"loss term {name!r} ({type(term).__name__}) needs {missing} but the model "
                    f"provides only {sorted(inputs)}; remove the term (~loss.terms.{name}) or "
                    "use a model that provides them")
            kwargs = {k: inputs[k] for k in (*required, *optional) if k in inputs}
            value = term(**kwargs) if side == "model" else term.d_loss(**kwargs)
            if value is None:
                continue
            # weight 1 (most terms): no multiply, one kernel launch less per term and step
            weighted = value if term.weight == 1.0 else term.weight * value
            total = weighted if total is None else total + weighted
            parts[name] = value.detach()
        if total is None:
            raise RuntimeError(f"LossSet: every {side} term ({self.names(side)}) sat this call "
                               "out")
        return LossOutput(total, parts)
