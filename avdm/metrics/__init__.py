"""Evaluation metrics (torchmetrics ``Metric`` subclasses).

* :class:`FrechetVideoDistance` with a pluggable feature extractor: the standard I3D from a local
  TorchScript file, or a documented fallback whose numbers are not comparable to published FVD.
* :class:`PromptAccuracy` reads a shapes clip's colour, shape and direction back from its pixels.
* :class:`MotionFaithfulness` tracks its object frame by frame: present, same colour and shape, no jumps.
* :mod:`avdm.metrics.shapes_classifier`: the shapes FVD extractor; :mod:`avdm.metrics.word_swap`: does a
  teacher read a caption's words.
"""

from avdm.metrics.fvd import (
    FrechetVideoDistance,
    I3DFeatureExtractor,
    RandomProjectionVideoFeatures,
    build_fvd,
    frechet_distance,
)
from avdm.metrics.motion import MotionFaithfulness, read_track
from avdm.metrics.prompt_accuracy import PromptAccuracy, ShapeAttributes, read_shape_attributes

__all__ = [
    "FrechetVideoDistance",
    "I3DFeatureExtractor",
    "MotionFaithfulness",
    "PromptAccuracy",
    "RandomProjectionVideoFeatures",
    "ShapeAttributes",
    "build_fvd",
    "frechet_distance",
    "read_shape_attributes",
    "read_track",
]
