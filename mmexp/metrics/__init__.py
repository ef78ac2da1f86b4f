"""Metrics: FID / KID / IS / precision-recall on the FID Inception, PSNR / SSIM / LPIPS (ST-LPIPS).

The entry point is :class:`MetricSuite` (built by Hydra from ``conf/metrics/<protocol>.yaml``).
"""

from mmexp.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from mmexp.metrics.generation import inception_score, kernel_inception_distance, precision_recall
from mmexp.metrics.inception import (
    CONVERTED_FILE,
    FIDELITY_FILE,
    InceptionV3Features,
    InceptionWeights,
    convert_fid_helper,
    resolve_inception_weights,
    to_uint8,
)
from mmexp.metrics.restoration import PerceptualDistance, psnr_per_image, ssim_per_image
from mmexp.metrics.suite import METRIC_CHOICES, MetricSuite, parse_metrics

__all__ = [
    "CONVERTED_FILE",
    "FIDELITY_FILE",
    "METRIC_CHOICES",
    "InceptionV3Features",
    "InceptionWeights",
    "MetricSuite",
    "PerceptualDistance",
    "convert_fid_helper",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "inception_score",
    "kernel_inception_distance",
    "parse_metrics",
    "precision_recall",
    "psnr_per_image",
    "resolve_inception_weights",
    "ssim_per_image",
    "to_uint8",
]
