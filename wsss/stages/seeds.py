"""``wsss seeds --method M``: the seed-method registry and the methods' per-image jobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import ThresholdConfig
from ..datasets import Sample
from .runner import ImageResult, MethodSpec


@dataclass
class ThresholdJob:
    config: ThresholdConfig
    needs_image = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..seeds.threshold import threshold_seeds

        return ImageResult(threshold_seeds(sample.image, sample.image_labels, sample.boxes,
                                           **dataclasses.asdict(self.config)))


def _threshold_job(config, **_):
    return ThresholdJob(config)


SEED_METHODS: dict[str, MethodSpec] = {
    "threshold": MethodSpec(ThresholdConfig, _threshold_job, "Otsu / fixed grey-level threshold, classes from tags"),
}
