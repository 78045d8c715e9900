"""``wsss label --guide G``: the label-guide registry and the guides' per-image jobs.

A guide fuses upstream stage folders into pseudo masks in ``RUN/labels/<guide>/``. The upstream folders are read
through their manifests (:class:`~wsss.stages.folder.StageFolder`): ``seeds`` (class evidence: the seed stage's
``scores/`` when it keeps them, e.g. CAMs, else its masks via
:func:`~wsss.label.guide.scores_from_seed_mask`) and ``saliency`` (a saliency stage's one-channel ``scores/``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import BoxSupConfig, CamGuideConfig, SaliencyGuideConfig, SaliencyOnlyConfig
from ..datasets import Dataset, Sample
from ..errors import ImageError, StageError
from .folder import StageFolder
from .runner import ImageResult, MethodSpec, StageSummary, run_method_stage
from .boxsup import BOXES_SUMMARY, boxes_guide_job


def seed_evidence(folder: StageFolder, image_id: str, image_labels, shape) -> tuple[np.ndarray, np.ndarray]:
    """Class evidence ``(maps (K, H, W), class_ids (K,))`` of one image from a seed stage folder."""
    import cv2

    from ..label.guide import scores_from_seed_mask

    row = folder.rows.get(image_id, {})
    if row.get("scores"):
        maps, class_ids = folder.scores(image_id)
        if maps.shape[0] == 1 and int(class_ids[0]) == 255:
            raise ImageError(f"{folder.path}: holds class-agnostic saliency maps, not class seeds; pass it as "
                             "--saliency and a CAM (or other) seed stage as --seeds")
        if maps.shape[1:] != tuple(shape):
            maps = np.stack([cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for m in maps]) \
                if len(maps) else np.zeros((0, *shape), np.float32)
        return maps, class_ids
    mask = folder.mask(image_id)
    if mask.shape != tuple(shape):
        raise ImageError(f"{folder.path}: seed mask of {image_id!r} is {mask.shape}, the image {tuple(shape)}")
    return scores_from_seed_mask(mask, image_labels)


def saliency_map(folder: StageFolder, image_id: str, shape) -> np.ndarray:
    """The (H, W) saliency map of one image from a saliency stage folder."""
    import cv2

    maps, class_ids = folder.scores(image_id)
    if maps.shape[0] != 1:
        raise ImageError(f"{folder.path}: scores of {image_id!r} hold {maps.shape[0]} maps; --saliency needs a "
                         "saliency stage (one map per image)")
    sal = maps[0]
    if sal.shape != tuple(shape):
        sal = cv2.resize(sal, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(sal, 0.0, 1.0)


def _shape(sample: Sample, folder: StageFolder) -> tuple[int, int]:
    if sample.gt is not None:
        return sample.gt.shape
    return folder.mask(sample.id).shape


@dataclass
class SaliencyGuideJob:
    config: SaliencyGuideConfig
    needs_image = False

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..label.guide import guide_labels

        shape = _shape(sample, upstream["seeds"])
        maps, ids = seed_evidence(upstream["seeds"], sample.id, sample.image_labels, shape)
        sal = saliency_map(upstream["saliency"], sample.id, shape)
        return ImageResult(guide_labels(sal, maps, ids, sample.image_labels, **dataclasses.asdict(self.config)))


@dataclass
class CamGuideJob:
    config: CamGuideConfig
    needs_image = False

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..label.guide import dense_cam_labels

        shape = _shape(sample, upstream["seeds"])
        maps, ids = seed_evidence(upstream["seeds"], sample.id, sample.image_labels, shape)
        return ImageResult(dense_cam_labels(maps, ids, sample.image_labels, **dataclasses.asdict(self.config)))


@dataclass
class SaliencyOnlyJob:
    config: SaliencyOnlyConfig
    needs_image = False

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..label.guide import saliency_only_labels

        shape = _shape(sample, upstream["saliency"])
        maps, ids = seed_evidence(upstream["seeds"], sample.id, sample.image_labels, shape)
        sal = saliency_map(upstream["saliency"], sample.id, shape)
        return ImageResult(saliency_only_labels(sal, maps, ids, sample.image_labels,
                                                **dataclasses.asdict(self.config)))


LABEL_GUIDES: dict[str, MethodSpec] = {
    "saliency": MethodSpec(SaliencyGuideConfig, lambda config, **_: SaliencyGuideJob(config),
                           "seeds give the class, saliency the extent (Oh et al. 2017)",
                           upstream=("seeds", "saliency")),
    "cam": MethodSpec(CamGuideConfig, lambda config, **_: CamGuideJob(config),
                      "seeds alone: dense arg-max of the seed maps", upstream=("seeds",)),
    "saliency-only": MethodSpec(SaliencyOnlyConfig, lambda config, **_: SaliencyOnlyJob(config),
                                "salient pixels take the image's top-scoring tag (baseline)",
                                upstream=("seeds", "saliency")),
    # BoxSup (wsss.stages.boxsup): its job factory runs every round first (RUN/labels/boxes_r<r>/, resumable)
    "boxes": MethodSpec(BoxSupConfig, boxes_guide_job, BOXES_SUMMARY),
}


def run_label_stage(guide: str, config, dataset: Dataset, run_dir: Path, *, upstream_paths: dict[str, str | None],
                    workers: int = 1, overwrite: bool = False, overlays: int = 0) -> StageSummary:
    """Open the upstream stage folders the guide needs and run it into ``run_dir/labels/<guide>/``."""
    spec = LABEL_GUIDES[guide]
    upstream = {}
    for name in spec.upstream:
        path = upstream_paths.get(name)
        if not path:
            example = "RUN/seeds/cam" if name == "seeds" else "RUN/seeds/saliency"
            raise StageError(f"--guide {guide} needs --{name} STAGE_FOLDER (e.g. {example})")
        upstream[name] = StageFolder.open(path)
    if "saliency" in upstream and not upstream["saliency"].has_scores:
        raise StageError(f"{upstream['saliency'].path}: keeps no scores/; --saliency needs a saliency stage folder "
                         "(wsss seeds --method saliency)")
    return run_method_stage("labels", guide, spec, config, dataset, run_dir, upstream=upstream, workers=workers,
                            overwrite=overwrite, overlays=overlays)
