"""Metric names and the protocol record that travels with every number a :class:`MetricSuite` reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mmexp.errors import ConfigError, WeightsNotFoundError
from mmexp.metrics.inception import INPUT_CONVERSION

if TYPE_CHECKING:
    from mmexp.metrics.suite import MetricSuite

GENERATION_METRICS = ("fid", "kid", "is", "pr")
PAIRED_METRICS = ("psnr", "ssim", "lpips", "st_lpips")
# faithfulness of conditional samples to their captions / labels, read by the shapes attribute reader
# (mmexp.metrics.faithfulness): reported as caption_<check> (and real_caption_<check>, the ceiling) and label_acc
FAITHFULNESS_METRICS = ("caption_acc", "label_acc")
METRIC_CHOICES = GENERATION_METRICS + PAIRED_METRICS + FAITHFULNESS_METRICS
FEATURE_METRICS = ("fid", "kid", "pr")  # those that need real-image features
# what compute() reports for the generation metrics
GENERATION_RESULTS = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall")
# Scored on reconstructions of real images rather than on generated samples, the same numbers get an
# "r" prefix (rFID, as image-tokenizer papers name the FID of reconstructions): an rFID is not a
# generation FID and must never be reported, monitored or compared as one.
RECONSTRUCTION_PREFIX = "r"
GENERATED, RECONSTRUCTIONS = "generated", "reconstructions"


def parse_metrics(metrics: str | Sequence[str] | None) -> tuple[str, ...]:
    """Metric names from a list or a comma string, validated and deduplicated, in the given order."""
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(" ", "").split(",") if m]
    out = []
    for m in metrics:
        m = str(m).strip().lower()
        if m not in METRIC_CHOICES:
            raise ConfigError(f"unknown metric {m!r}; choose from: {', '.join(METRIC_CHOICES)}")
        if m not in out:
            out.append(m)
    if "lpips" in out and "st_lpips" in out:
        raise ConfigError("choose one of lpips and st_lpips")
    return tuple(out)


def result_name(name: str, fake_kind: str | None) -> str:
    """The reported name of a result: ``fid`` of reconstructions is ``rfid``, and so on."""
    if fake_kind == RECONSTRUCTIONS and name in GENERATION_RESULTS:
        return RECONSTRUCTION_PREFIX + name
    return name


def describe(suite: MetricSuite) -> dict:
    """The protocol of ``suite`` (JSON-serialisable): everything its numbers depend on."""
    p: dict = {
        "name": suite.name,
        "metrics": list(suite.metrics),
        "reference_split": suite.reference_split,
        "num_samples": suite.num_samples,
        "reference_samples": suite.reference_samples,
        "batch_size": suite.batch_size,
        "seed": suite.seed,
    }
    if suite.generation_metrics:
        try:
            weights = suite.inception_weights().identity()
        except WeightsNotFoundError:
            weights = "missing"
        p.update(
            feature_extractor={"name": suite.feature_extractor, "features": "pool3 (2048)", "weights": weights},
            resize=suite.resize,
            input_conversion=INPUT_CONVERSION,
        )
        if suite.fake_kind == RECONSTRUCTIONS:
            p["samples"] = f"reconstructions of split {suite.scored_split}"
        elif suite.fake_kind == GENERATED:
            p["samples"] = "generated"
        if "kid" in suite.metrics:
            p["kid"] = {"subsets": suite.kid_subsets, "subset_size": suite.kid_subset_size,
                        "kernel": "poly(degree=3, gamma=1/d, coef0=1)", "estimator": "unbiased"}
        if "is" in suite.metrics:
            p["is"] = {"splits": suite.is_splits, "logits": "unbiased (torch-fidelity)"}
        if "pr" in suite.metrics:
            p["pr"] = {"k": suite.pr_k}
        if suite.reference_key_in_use is not None:
            p["reference_key"] = suite.reference_key_in_use
    if suite.paired_metrics:
        p["restoration"] = {
            "color": "y" if suite.y_channel else "rgb",
            "crop_border": suite.crop_border,
            "quantize": suite.quantize,
            "ssim": "gaussian 11x11 sigma=1.5 K1=0.01 K2=0.03 valid",
            "reduction": "mean over images",
        }
        perceptual = suite.perceptual_identity()
        if perceptual is not None:
            p["perceptual"] = perceptual
    if suite.faithfulness_metrics:
        from mmexp.metrics.faithfulness import CAPTION_CHECKS

        p["faithfulness"] = {
            "reader": suite.attribute_reader.identity(),
            "images": "generated with the batch's own captions/labels (real_caption_*: the real images of the "
                      "scored split with their captions, the reader's ceiling)",
            "caption_checks": list(CAPTION_CHECKS),
            "reduction": "caption_<check>: stated facts read right / stated, over all images; caption_all: "
                         "fraction of images with every check right; label_acc: fraction of images whose labelled "
                         "shape is read (on the first stated object when captioned)",
        }
    if suite.last_counts:
        p["counts"] = dict(suite.last_counts)
    return p
