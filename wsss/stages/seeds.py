"""``wsss seeds --method M``: the seed-method registry and the methods' per-image jobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import BoxConfig, GrabCutConfig, SaliencyConfig, ThresholdConfig
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


@dataclass
class BoxFillJob:
    config: "BoxConfig"
    needs_image = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..seeds.grabcut import box_fill

        return ImageResult(box_fill(sample.image.shape[:2], _boxes_or_error(sample)))


@dataclass
class GrabCutJob:
    config: "GrabCutConfig"
    needs_image = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..seeds.grabcut import grabcut_seeds

        mask, scores, class_ids = grabcut_seeds(sample.image, _boxes_or_error(sample),
                                                **dataclasses.asdict(self.config))
        return ImageResult(mask, scores=scores, class_ids=class_ids)


def _boxes_or_error(sample: Sample):
    """The sample's boxes; an image tagged with a class that has no box is an ImageError (box methods need every
    object boxed: VOC XML ``<bndbox>`` or the folder layout's ``boxes.csv``)."""
    from ..errors import ImageError

    boxed = {int(c) for c in sample.boxes[:, 0]} if len(sample.boxes) else set()
    missing = sorted(set(int(c) for c in sample.image_labels) - boxed)
    if missing:
        raise ImageError(f"image {sample.id!r}: tagged with class id(s) {missing} but has no box for them; box seeds "
                         "need a box per object (VOC Annotations/<id>.xml bndbox or the folder layout's boxes.csv)")
    return sample.boxes


def _saliency_job(config, **kwargs):
    from .saliency import make_saliency_job

    return make_saliency_job(config, **kwargs)


SEED_METHODS: dict[str, MethodSpec] = {
    "box": MethodSpec(BoxConfig, lambda config, **_: BoxFillJob(config),
                      "plain box fill, smaller boxes over larger (the box baseline)"),
    "grabcut": MethodSpec(GrabCutConfig, lambda config, **_: GrabCutJob(config),
                          "GrabCut per box with the box prior; doubtful band 255; soft scores for a CRF",
                          writes_scores=True),
    "threshold": MethodSpec(ThresholdConfig, _threshold_job, "Otsu / fixed grey-level threshold, classes from tags"),
    "saliency": MethodSpec(SaliencyConfig, _saliency_job, "class-agnostic saliency net trained on GrabCut-from-box "
                           "targets (Oh et al. 2017); masks: salient = the tag if one, else 255", writes_scores=True),
}
