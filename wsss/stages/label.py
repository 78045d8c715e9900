"""``wsss label --guide G``: the label-guide registry and the guides' per-image jobs.

A guide fuses upstream stage folders into pseudo masks in ``RUN/labels/<guide>/``. The upstream folders are read
through their manifests (:class:`~wsss.folders.StageFolder`): ``seeds`` (class evidence: the seed stage's
``scores/`` when it keeps them, e.g. CAMs, else its masks via
:func:`~wsss.label.guide.scores_from_seed_mask`) and ``saliency`` (a saliency stage's one-channel ``scores/``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import BoxSupConfig, CamGuideConfig, SaliencyGuideConfig, SaliencyOnlyConfig, SelfTrainConfig
from ..datasets import Dataset, Sample
from ..errors import ImageError, StageError
from ..io import read_json, write_json
from ..folders import StageFolder
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


@dataclass
class SelfTrainJob:
    config: SelfTrainConfig
    checkpoint: str
    device: str
    bf16: bool
    needs_image = True
    uses_torch = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..label.selftrain import box_constrained_labels
        from .predict import checkpoint_probs

        if sample.boxes is None or not len(sample.boxes):
            raise ImageError(f"{sample.id}: no boxes in the dataset; --guide selftrain holds the network to the "
                             "image's boxes (VOC XML or boxes.csv)")
        probs = checkpoint_probs(self.checkpoint, sample.image, scales=self.config.predict_scales,
                                 flip=self.config.predict_flip, device=self.device, bf16=self.bf16)
        reference = None
        if "reference" in upstream:
            reference = upstream["reference"].mask(sample.id)
            if reference.shape != sample.image.shape[:2]:
                raise ImageError(f"{upstream['reference'].path}: mask of {sample.id!r} is {reference.shape}, the "
                                 f"image {sample.image.shape[:2]}; the reference was made from another dataset")
        mask = box_constrained_labels(probs.argmax(0), sample.boxes, reference=reference)
        if self.config.crf and (mask == 255).any():
            from ..crf import crf_refine

            mask = crf_refine(sample.image, mask=mask, image_labels=sample.image_labels, boxes=sample.boxes,
                              relabel="ignore", preset=self.config.crf_preset)
        return ImageResult(mask)


def _selftrain_job(config: SelfTrainConfig, *, stage_dir: Path, upstream: dict, **_):
    """The checkpoint's identity (its training config and iteration) is recorded in stage.json: labels made by
    another network are not mixed with this one's (a retrained checkpoint asks for --overwrite)."""
    from ..runtime import CHECKPOINT, load_checkpoint, pick_device, resolve_speed

    if "checkpoint" not in upstream:
        raise StageError("--guide selftrain needs --checkpoint TRAIN_STAGE (the network trained on the box labels, "
                         "e.g. RUN/train/deeplabv2)")
    if not config.predict_scales or any(x <= 0 for x in config.predict_scales):
        raise StageError(f"--predict-scales {config.predict_scales}: give positive scales, e.g. 1.0 or 0.75,1,1.25")
    path = Path(upstream["checkpoint"].path)
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        raise StageError(f"{checkpoint}: no checkpoint; train the network first (wsss train --labels ...)")
    state = load_checkpoint(checkpoint)
    identity = f"{state['meta'].get('config_hash', '')}:{int(state['iteration'])}"
    info = read_json(stage_dir / "stage.json")
    if info.get("checkpoint_identity") not in (None, identity):
        raise StageError(f"{stage_dir}: made with another training of {checkpoint} ({info['checkpoint_identity']}, "
                         f"now {identity}); rerun with --overwrite")
    info.update({"checkpoint": str(checkpoint), "checkpoint_identity": identity})
    write_json(stage_dir / "stage.json", info)
    dev = pick_device(config.device)
    return SelfTrainJob(config, str(checkpoint), str(dev),
                        resolve_speed("auto", dev, "bf16", state["meta"].get("backbone")))


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
    "selftrain": MethodSpec(SelfTrainConfig, _selftrain_job,
                            "the network trained on box labels relabels the images inside their boxes, 255 where "
                            "it disagrees with --reference, then CRF (Khoreva et al. 2017)",
                            upstream=("checkpoint",), optional_upstream=("reference",), torch_threads=1),
}


def run_label_stage(guide: str, config, dataset: Dataset, run_dir: Path, *, upstream_paths: dict[str, str | None],
                    workers: int = 1, overwrite: bool = False, overlays: int = 0) -> StageSummary:
    """Open the upstream stage folders the guide needs and run it into ``run_dir/labels/<guide>/``."""
    spec = LABEL_GUIDES[guide]
    upstream = {}
    for name in (*spec.upstream, *spec.optional_upstream):
        path = upstream_paths.get(name)
        if not path:
            if name in spec.optional_upstream:
                continue
            example = {"seeds": "RUN/seeds/cam", "saliency": "RUN/seeds/saliency",
                       "checkpoint": "RUN/train/deeplabv2"}.get(name, "RUN/STAGE/METHOD")
            raise StageError(f"--guide {guide} needs --{name} STAGE_FOLDER (e.g. {example})")
        # a checkpoint is a train stage (stage.json + checkpoint.pt, no manifest): read by the job itself
        upstream[name] = StageFolder(Path(path)) if name == "checkpoint" else StageFolder.open(path)
    if "saliency" in upstream and not upstream["saliency"].has_scores:
        raise StageError(f"{upstream['saliency'].path}: keeps no scores/; --saliency needs a saliency stage folder "
                         "(wsss seeds --method saliency)")
    return run_method_stage("labels", guide, spec, config, dataset, run_dir, upstream=upstream, workers=workers,
                            overwrite=overwrite, overlays=overlays)
