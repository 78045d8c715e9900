"""``wsss seeds --method M``: the seed-method registry and the methods' per-image jobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import (
    BoxConfig,
    CamConfig,
    GrabCutConfig,
    SaliencyConfig,
    ThresholdConfig,
)
from ..datasets import Sample
from .runner import ImageResult, MethodSpec, load_once


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


_AGREE_FOLDERS: dict = {}  # per-process cache of the --agree stage folder


@dataclass
class GrabCutJob:
    config: "GrabCutConfig"
    num_classes: int | None = None
    agree_dir: str | None = None  # the second-opinion folder: --agree, or a recipe's ``inputs: {agree: STEP}``
    needs_image = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        import os

        from ..errors import ImageError
        from ..folders import StageFolder
        from ..seeds.grabcut import grabcut_seeds

        options = dataclasses.asdict(self.config)
        del options["agree"]
        agree_dir = self.agree_dir
        agree = None
        if agree_dir:
            manifest = os.path.join(agree_dir, "manifest.csv")
            key = (agree_dir, os.path.getmtime(manifest) if os.path.exists(manifest) else None)
            if key not in _AGREE_FOLDERS:  # opened once per process (and again if the folder was re-run)
                _AGREE_FOLDERS.clear()
                _AGREE_FOLDERS[key] = StageFolder.open(agree_dir)
            agree = _AGREE_FOLDERS[key].mask(sample.id, self.num_classes)
            if agree.shape != sample.image.shape[:2]:
                raise ImageError(f"{agree_dir}: the mask of {sample.id!r} is {agree.shape[1]}x{agree.shape[0]}, the "
                                 f"image {sample.image.shape[1]}x{sample.image.shape[0]}; --agree needs a stage "
                                 "folder made from this dataset (re-run it, e.g. wsss candidates)")
        mask, scores, class_ids = grabcut_seeds(sample.image, _boxes_or_error(sample), agree=agree, **options)
        return ImageResult(mask, scores=scores, class_ids=class_ids)


def _grabcut_job(config, *, dataset, upstream=None, **_):
    """The GrabCut job; the second-opinion folder (``--agree`` or the upstream role ``agree``) must exist and hold
    masks for some image of the split."""
    from ..errors import ConfigError
    from ..folders import StageFolder

    if config.agree_weight < 0:
        raise ConfigError(f"--agree-weight {config.agree_weight}: give a weight >= 0")
    given = (upstream or {}).get("agree")
    if given is not None and config.agree:
        raise ConfigError("give the second opinion once: --agree or the recipe input 'agree', not both")
    agree_dir = str(given.path) if given is not None else config.agree
    if agree_dir:
        folder = given if given is not None else StageFolder.open(agree_dir)  # StageError naming a bad path
        if not any(folder.has(i) for i in dataset.ids):
            raise ConfigError(f"--agree {agree_dir}: no mask there for any image of this split; make it from the "
                              f"same dataset and split first (e.g. wsss candidates --split ...)")
    return GrabCutJob(config, dataset.num_classes, agree_dir)


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


def _cam_info(config, *, stage_dir, dataset) -> dict:
    """``stage.json``'s ``training`` entry of a CAM stage that trained its classifier: epochs, images seen, seconds,
    throughput and the last epoch's loss, from ``train_log.csv`` (a ``--checkpoint`` stage names the classifier);
    with ``--recam-epochs`` the same figures of the fine-tuning under ``recam``."""
    from ..trainers.cam_classifier import RECAM_LOG, TRAIN_LOG

    log_path = stage_dir / TRAIN_LOG
    if config.checkpoint or not log_path.exists():
        info = {"classifier": str(config.checkpoint), "trained_here": False}
    else:
        info = {"trained_here": True, "train_split": config.train_split or dataset.split, **_log_info(log_path)}
    if config.recam_epochs > 0 and (stage_dir / RECAM_LOG).exists():
        info["recam"] = {"weight": config.recam_weight, **_log_info(stage_dir / RECAM_LOG)}
    return {"training": info}


def _log_info(log_path) -> dict:
    """Epochs, images seen, seconds, throughput and last loss of a classifier training log."""
    from ..io import read_csv

    rows = read_csv(log_path)
    if not rows:
        return {"epochs": 0, "log": log_path.name}
    seconds = float(rows[-1]["train_seconds"])
    images = sum(int(r["images"]) for r in rows)
    return {"epochs": len(rows), "images_seen": images, "seconds": round(seconds, 1),
            "images_per_second": round(images / seconds, 2) if seconds > 0 else None,
            "last_loss": float(rows[-1]["mean_loss"]), "log": log_path.name}


def _saliency_info(config, **kwargs):
    from .saliency import saliency_stage_info

    return saliency_stage_info(config, **kwargs)


def _saliency_job(config, **kwargs):
    from .saliency import make_saliency_job

    return make_saliency_job(config, **kwargs)


@dataclass
class CamJob:
    """Multi-scale CAM of one image from a trained classifier checkpoint (picklable: the model loads lazily), fused
    with the ImageNet prior (:mod:`wsss.seeds.imagenet_prior`) when ``config.imagenet_prior`` > 0."""

    checkpoint: str
    config: "CamConfig"
    class_names: tuple  # the dataset's, background first
    needs_image = True
    uses_torch = True  # the runner caps each pool worker's torch threads

    @property
    def num_classes(self) -> int:
        """Foreground classes: the classifier's outputs."""
        return len(self.class_names) - 1

    def model(self):
        """``(classifier, prior or None, device)``, loaded once per process."""
        from ..runtime import pick_device, resolve_speed
        from ..seeds.cam import prepare_for_inference
        from ..trainers.cam_classifier import load_classifier

        device = pick_device(self.config.device)
        channels_last = resolve_speed(self.config.channels_last, device, "channels_last")

        def load():
            model = load_classifier(self.checkpoint, num_classes=self.num_classes, device=device,
                                    output_stride=self.config.inference_stride or None)
            return prepare_for_inference(model, channels_last=channels_last), self._prior(model, device)

        model, prior = load_once(self.checkpoint, load, str(device), channels_last, self.config.inference_stride,
                                 self.config.imagenet_prior > 0, self.config.imagenet_groups, self.class_names)
        return model, prior, device

    def _prior(self, model, device):
        if self.config.imagenet_prior <= 0:
            return None
        from ..conventions import imagenet_groups
        from ..errors import ConfigError
        from ..models.backbones import LITE_VARIANTS
        from ..seeds.imagenet_prior import ImageNetPrior

        groups = imagenet_groups(self.class_names, self.config.imagenet_groups)
        if not groups:
            raise ConfigError("--imagenet-prior: no class of this dataset (" + ", ".join(self.class_names[1:]) +
                              f") has an ImageNet group in {self.config.imagenet_groups or 'data/imagenet_groups.yaml'}"
                              "; give --imagenet-groups FILE with their ImageNet kinds, or leave --imagenet-prior at 0")
        backbone = model.backbone_name if model.backbone_name in LITE_VARIANTS else "efficientnet_lite0"
        return ImageNetPrior(groups, backbone=backbone).to(device)

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        import numpy as np

        from ..runtime import resolve_speed, uses_bf16
        from ..seeds.cam import cam_seed_mask, multiscale_cam

        model, prior, device = self.model()
        bf16 = uses_bf16(self.config.bf16, device)
        cams, class_ids = multiscale_cam(model, sample.image, sample.image_labels, scales=self.config.scales,
                                         flip=self.config.flip, bf16=bf16,
                                         channels_last=resolve_speed(self.config.channels_last, device, "channels_last"))
        if prior is not None and class_ids.size:
            from ..seeds.imagenet_prior import fuse_prior, prior_maps

            maps, has_group = prior_maps(prior, sample.image, class_ids, scales=self.config.imagenet_prior_scales,
                                         flip=self.config.flip)
            cams = fuse_prior(cams, maps, has_group, self.config.imagenet_prior)
        cams = cams.astype(np.float16).astype(np.float32)  # as stored: the kept scores reproduce the mask exactly
        mask = cam_seed_mask(cams, class_ids, bg_threshold=self.config.bg_threshold,
                             fg_threshold=self.config.fg_threshold)
        return ImageResult(mask, scores=cams, class_ids=class_ids)


def _cam_job(config, *, stage_dir, dataset, workers=1, **_):
    """Train the classifier into the stage folder (resumable) unless ``--checkpoint`` is given; then the job."""

    from ..datasets import open_dataset
    from ..errors import ConfigError
    from ..trainers.cam_classifier import train_classifier, train_recam

    if config.fg_threshold is not None and config.fg_threshold < config.bg_threshold:
        raise ConfigError(f"--fg-threshold {config.fg_threshold} is below --bg-threshold {config.bg_threshold}; "
                          "give fg >= bg")
    if not config.scales or min(config.scales) <= 0:
        raise ConfigError(f"--scales {config.scales}: give positive scales, e.g. 1.0,0.5,1.5,2.0")
    loader_workers = 0 if workers <= 1 else min(workers, 4)
    train_set = dataset
    if config.train_split is not None and (not config.checkpoint or config.recam_epochs > 0):
        train_set = open_dataset(dataset.root, config.train_split)
    if config.checkpoint:
        checkpoint = config.checkpoint
    else:
        checkpoint = str(train_classifier(train_set, stage_dir, config, loader_workers=loader_workers))
    if config.recam_epochs > 0:  # ReCAM's fine-tuning of that classifier, into the stage folder
        checkpoint = str(train_recam(train_set, stage_dir, config, checkpoint, loader_workers=loader_workers))
    if not 0.0 <= config.imagenet_prior <= 1.0:
        raise ConfigError(f"--imagenet-prior {config.imagenet_prior}: give a weight in 0..1 (0: off)")
    if config.imagenet_prior > 0 and (not config.imagenet_prior_scales or min(config.imagenet_prior_scales) <= 0):
        raise ConfigError(f"--imagenet-prior-scales {config.imagenet_prior_scales}: give positive scales, e.g. 1.0")
    job = CamJob(checkpoint, config, tuple(dataset.classes))
    job.model()  # fail early (bad checkpoint, class count) before the image loop
    return job


SEED_METHODS: dict[str, MethodSpec] = {
    "cam": MethodSpec(CamConfig, _cam_job, "class activation maps of a GAP classifier trained on the tags",
                      writes_scores=True, finish=_cam_info),
    "box": MethodSpec(BoxConfig, lambda config, **_: BoxFillJob(config),
                      "plain box fill, smaller boxes over larger (the box baseline)"),
    "grabcut": MethodSpec(GrabCutConfig, _grabcut_job,
                          "GrabCut per box with the box prior; doubtful band 255; soft scores for a CRF; --agree: "
                          "labelled only where a second opinion (e.g. RUN/candidates/selective) agrees",
                          writes_scores=True, optional_upstream=("agree",)),
    "threshold": MethodSpec(ThresholdConfig, _threshold_job, "Otsu / fixed grey-level threshold, classes from tags"),
    "saliency": MethodSpec(SaliencyConfig, _saliency_job, "class-agnostic saliency net trained on GrabCut-from-box "
                           "targets (Oh et al. 2017); masks: salient = the tag if one, else 255", writes_scores=True,
                           finish=_saliency_info),
}
