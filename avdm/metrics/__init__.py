"""Evaluation metrics (torchmetrics ``Metric`` subclasses).

* :class:`FrechetVideoDistance` with a pluggable feature extractor: the standard I3D from a local
  TorchScript file, or a documented fallback whose numbers are not comparable to published FVD.
* :class:`PromptAccuracy` reads a shapes clip's colour, shape and direction back from its pixels.
"""

from avdm.metrics.fvd import (
    FrechetVideoDistance,
    I3DFeatureExtractor,
    RandomProjectionVideoFeatures,
    build_fvd,
    frechet_distance,
)
from avdm.metrics.prompt_accuracy import PromptAccuracy, ShapeAttributes, read_shape_attributes

__all__ = [
    "FrechetVideoDistance",
    "I3DFeatureExtractor",
    "PromptAccuracy",
    "RandomProjectionVideoFeatures",
    "ShapeAttributes",
    "build_fvd",
    "frechet_distance",
    "read_shape_attributes",
]
