"""The shipped shapes classifier: it reads captions from clips, and its FVD sees a change of one attribute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avdm.data.shapes import COMBINATIONS, render_clip
from avdm.errors import MissingWeightsError
from avdm.metrics import build_fvd
from avdm.metrics.shapes_classifier import NAME, load_classifier


def _clips(combos, seed: int) -> torch.Tensor:
    """Rendered clips ``(N, 3, 8, 32, 32)`` in [-1, 1], one per ``(colour, shape, direction)``."""
    videos = [render_clip(*combo, 8, 32, np.random.default_rng([seed, i])) for i, combo in enumerate(combos)]
    return torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_classifier_reads_every_attribute_of_unseen_clips(classifier):
    combos = list(COMBINATIONS)  # all 60 captions, seeds the classifier never saw
    predicted = classifier.predict(_clips(combos, seed=777))
    hits = np.array([[p[i] == c[i] for i in range(3)] for p, c in zip(predicted, combos)])
    assert hits.mean(axis=0).min() >= 0.95, hits.mean(axis=0)
    assert classifier.name == NAME and classifier.feature_dim == 64
    assert all(not p.requires_grad for p in classifier.parameters()) and not classifier.training


@pytest.mark.parametrize("part", [0, 1, 2], ids=["colour", "shape", "direction"])
def test_shapes_fvd_separates_clips_that_differ_in_one_attribute(part):
    """Two draws of the same captions are close; the same clips with one attribute changed are far, and
    farther (relative to the same-caption distance) than the random fallback extractor sees them."""
    from avdm.data.shapes import COLOURS, DIRECTIONS, SHAPES

    values = (COLOURS, SHAPES, DIRECTIONS)[part]
    base = [c for c in COMBINATIONS if c[part] == values[0]] * 10  # e.g. only red clips
    changed = [tuple(values[1] if i == part else v for i, v in enumerate(c)) for c in base]  # only blue

    def ratio(fvd) -> float:
        distances = []
        for other in (base, changed):
            fvd.reset()
            fvd.update(_clips(base, seed=1), real=True)
            fvd.update(_clips(other, seed=2), real=False)
            distances.append(float(fvd.compute()))
        return distances[1] / distances[0]

    shapes_fvd = build_fvd(None, extractor="shapes")
    assert shapes_fvd.extractor_name == NAME
    shapes_ratio = ratio(shapes_fvd)  # measured: 498 (colour), 51 (shape), 85 (direction)
    assert shapes_ratio > 20 and shapes_ratio > ratio(build_fvd(None)), shapes_ratio


def test_missing_classifier_folder_is_one_line(tmp_path):
    with pytest.raises(MissingWeightsError, match="make shapes-classifier") as err:
        load_classifier(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="extractor must be"):
        build_fvd(None, extractor="clip")
