"""Losses as composable, weighted terms; configs in ``conf/loss/`` (``loss=...``).

A loss is a :class:`LossSet`: named :class:`LossTerm` s, each with its ``weight`` in the config::

    loss:
      _target_: mmexp.losses.LossSet
      terms:
        recon: {_target_: mmexp.losses.likelihood.GaussianNLL, weight: 1.0}
        kl: {_target_: mmexp.losses.kl.GaussianKL, weight: 1.0}

Select one with ``loss=NAME``; change a weight with ``loss.terms.kl.weight=4``; add a term with
``'+loss.terms.r1={_target_:mmexp.losses.adversarial.R1Penalty,weight:10}'``; drop one with
``~loss.terms.NAME``. Each model config names its default loss (``model=vae`` brings
``loss=vae``) and receives the loss as ``model.loss: ${loss}``.

Inputs. A term's ``forward`` / ``d_loss`` parameters name what it needs; the model passes
everything it has by name and each term takes its own (R1 and the gradient penalty take the
discriminator and the images; a likelihood takes the decoder's ``log_sigma``). The names in use:

- ``pred``, ``target``, ``pixel_weight``: prediction, target image, per-pixel weight (a mask);
- ``real``, ``fake``: real and generated image batches; ``real_logits``, ``fake_logits``: D's raw
  outputs on them; ``real_features``, ``fake_features``: D's intermediate activations on them (feature
  matching); ``discriminator``: D itself; ``step``: index of the discriminator step;
- ``mu``, ``logvar``, ``log_sigma``: VAE posterior and decoder scale;
- ``commitment``, ``codebook``: the vector quantiser's distances;
- ``input``, ``network``: a restorer's degraded input and its network (the warping loss of a video
  network's flow, :mod:`.flow`).

Values and logs. A term returns its **unweighted** value; the total is ``sum(weight * value)``.
Totals keep their names (``train/loss``; a GAN's ``train/d_loss`` and ``train/g_loss``) and each
part is logged unweighted as ``train/loss/<name>``, for a GAN ``train/loss/d/<name>`` (terms on
the discriminator: the adversarial loss, penalties) and ``train/loss/g/<name>`` (the generator);
validation logs ``val/loss`` and ``val/loss/<name>`` the same way.

Modules: :mod:`.base` (LossTerm, LossSet), :mod:`.adversarial` (non-saturating, hinge, least squares,
relativistic average, Wasserstein; feature matching; gradient penalty, R1), :mod:`.reconstruction` (L1, MSE, Charbonnier),
:mod:`.perceptual` (ST-LPIPS), :mod:`.likelihood` (Gaussian / Bernoulli NLL), :mod:`.kl`
(Gaussian KL), :mod:`.vq` (commitment, codebook).
"""

from mmexp.losses.base import LossOutput, LossSet, LossTerm

__all__ = ["LossOutput", "LossSet", "LossTerm"]
