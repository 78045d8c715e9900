"""Training the GAP-CAM classifier on image-level tags (multi-label soft-margin loss), with checkpoint and resume.

Everything lives in one folder (the cam stage folder): ``classifier.pt`` (model + optimizer + epoch; written
atomically after every epoch, ``complete`` once training ended) and ``train_log.csv`` (one row per epoch). A run
that is killed resumes from the last finished epoch (the checkpoint carries torch's RNG state, which the
augmentation draws from, so the resumed run ends with the same weights); a complete checkpoint is reused as is.
Images that cannot be loaded (unreadable, truncated, broken annotation) are left out before training and listed in
``train_skipped.csv``; the per-image pass then lists them as failures.

Augmentation (:func:`wsss.pairs.augment_tagged`): random rescale (long side drawn in ``resize_long``), random crop
of ``crop_size`` (zero-padded when smaller), horizontal flip, colour jitter, the backbone's input normalisation;
optionally CutMix across the batch (``--cutmix``, :class:`wsss.models.classifier.CutMixTraining`).

``--recam-epochs`` fine-tunes the trained classifier with ReCAM's softmax loss (:func:`train_recam`) into
``recam.pt`` + ``recam_log.csv`` beside it, resumable the same way.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..config import CamConfig, config_to_dict
from ..datasets import Dataset
from ..errors import ConfigError, DatasetError, ImageError, UnsafeFileError
from ..fit import FitState, epochs_done, fit, mark_complete, training_state
from ..io import load_checkpoint, save_checkpoint, write_bytes, write_csv
from ..progress import progress
from ..runtime import pick_device

log = logging.getLogger(__name__)

CHECKPOINT = "classifier.pt"
TRAIN_LOG = "train_log.csv"
RECAM_CHECKPOINT = "recam.pt"  # --recam-epochs: the classifier fine-tuned with ReCAM's loss (train_recam)
RECAM_LOG = "recam_log.csv"
SKIPPED = "train_skipped.csv"  # training images left out (image_id, reason)
LOG_HEADER = "epoch,iterations,images,mean_loss,lr,images_per_second,epoch_seconds,train_seconds\n"


class TagDataset(torch.utils.data.Dataset):
    """(augmented image (3, crop, crop) float, multi-hot tags (K,) float) pairs for classifier training."""

    def __init__(self, dataset: Dataset, ids: list[str], config: CamConfig, normalisation: tuple):
        if len(config.resize_long) != 2 or config.resize_long[0] > config.resize_long[1]:
            raise ConfigError(f"resize_long {config.resize_long}: give MIN,MAX pixels with MIN <= MAX")
        self.dataset, self.ids, self.config = dataset, list(ids), config
        self.num_classes = dataset.num_classes - 1
        self.normalisation = normalisation

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int):
        from ..pairs import augment_tagged

        sample = self.dataset.load(self.ids[k], gt=False)
        image = augment_tagged(np.asarray(sample.image), crop_size=self.config.crop_size,
                               resize_long=tuple(self.config.resize_long), normalisation=self.normalisation)
        target = torch.zeros(self.num_classes)
        for c in sample.image_labels:
            target[int(c) - 1] = 1.0
        return torch.from_numpy(image), target


def read_checkpoint(path: str | Path) -> dict:
    """Load a classifier checkpoint through :func:`wsss.io.load_checkpoint` (``weights_only=True``); unsafe or
    foreign files are refused."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: classifier checkpoint not found; give the classifier.pt of a cam stage folder")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise UnsafeFileError(f"{path}: not a wsss classifier checkpoint (keys model/meta missing); retrain it")
    return state


def _check_classes(path: str | Path, meta: dict, num_classes: int) -> None:
    """A classifier checkpoint's foreground class count must be the dataset's (:class:`ConfigError` naming both)."""
    if meta["num_classes"] != num_classes:
        raise ConfigError(f"{path}: classifier has {meta['num_classes']} foreground classes but the dataset has "
                          f"{num_classes}; use a checkpoint trained on this class list or retrain")


def load_classifier(path: str | Path, *, num_classes: int | None = None, device: torch.device | str = "cpu",
                    output_stride: int | None = None):
    """The trained :class:`CAMClassifier` from ``path`` in eval mode; ``num_classes`` (foreground) is checked.
    ``output_stride`` rebuilds the backbone at another stride (dilation only: the same weights); default: the
    stride it was trained at."""
    from ..models.classifier import build_classifier

    state = read_checkpoint(path)
    meta = state["meta"]
    if num_classes is not None:
        _check_classes(path, meta, num_classes)
    from ..models.classifier import classifier_state

    model = build_classifier(num_classes=meta["num_classes"], backbone=meta["backbone"],
                             output_stride=int(output_stride or meta.get("output_stride", 16)),
                             recam=bool(meta.get("recam", False)))
    model.load_state_dict(classifier_state(state["model"]))  # checkpoints before the backbone contract too
    return model.to(device).eval()


def _param_groups(model, config: CamConfig, own_scale: float = 1.0):
    """Optimizer groups: the backbone at lr x its scale, the classifier ``W`` at lr (both x ``own_scale``: ReCAM
    fine-tunes them at a tenth) and a ReCAM predictor, when the model has one, at lr."""
    from ..models.backbones import backbone_lr_scale

    scale = backbone_lr_scale(config.backbone_lr_scale, config.weights, config.backbone)
    head = list(model.classifier.parameters())
    predictor = [] if model.recam is None else list(model.recam.parameters())
    own = {id(p) for p in head + predictor}
    body = [p for p in model.parameters() if id(p) not in own and p.requires_grad]  # frozen layers: none
    groups = [{"params": body, "lr_scale": scale * own_scale}, {"params": head, "lr_scale": own_scale}]
    return groups + ([{"params": predictor, "lr_scale": 1.0}] if predictor else [])


def _make_optimizer(model, config: CamConfig, own_scale: float = 1.0):
    groups = _param_groups(model, config, own_scale)
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return opt


def usable_training_ids(dataset: Dataset, ids: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(usable ids, [(id, reason), ...])``: each image is read once as the loader reads it (full decode, tags,
    boxes), so an unreadable or truncated image or a broken annotation is left out before training instead of
    stopping it mid-epoch. The outcome depends only on the files, so a resumed run sees the same set (exact resume).
    No usable image at all is a :class:`DatasetError`."""
    good, skipped = [], []
    for image_id in progress(ids, desc="checking classifier training images", unit="img", leave=False):
        try:
            dataset.load(image_id, gt=False)
        except ImageError as exc:
            skipped.append((image_id, str(exc)))
        else:
            good.append(image_id)
    for image_id, why in skipped[:10]:
        log.warning("classifier training leaves out %s: %s", image_id, why)
    if not good:
        raise DatasetError(f"{dataset.root}: no usable image to train the classifier on among {len(ids)} of split "
                           f"{dataset.split!r} (first: {skipped[0][1]}); fix those files")
    return good, skipped


def train_classifier(dataset: Dataset, out_dir: str | Path, config: CamConfig, *, ids: list[str] | None = None,
                     loader_workers: int = 0) -> Path:
    """Train (or resume, or reuse) the classifier of ``config`` on ``dataset``'s tags with :func:`wsss.fit.fit`
    (one checkpoint an epoch); returns the checkpoint path.

    ``ids`` restricts training to those images (default: every id of ``dataset``). ``loader_workers`` > 0 decodes
    and augments in that many processes.
    """
    from ..models.backbones import freeze_early_layers
    from ..models.classifier import build_classifier

    if config.equivariance < 0 or not 0.0 < config.equivariance_scale < 1.0:
        raise ConfigError(f"--equivariance {config.equivariance}, --equivariance-scale {config.equivariance_scale}: "
                          "give a weight >= 0 (0: off) and a scale between 0 and 1, e.g. 1.0 and 0.5")
    if not 0.0 <= config.cutmix <= 1.0 or (config.cutmix > 0 and config.equivariance > 0):
        raise ConfigError(f"--cutmix {config.cutmix} (with --equivariance {config.equivariance}): give a probability "
                          "between 0 and 1, and not together with --equivariance (one training view at a time)")
    if config.epochs < 1 or config.batch_size < 1 or config.crop_size < 8:
        raise ConfigError(f"epochs {config.epochs}, batch_size {config.batch_size}, crop_size {config.crop_size}: "
                          "need epochs >= 1, batch_size >= 1, crop_size >= 8")
    if config.max_minutes is not None and config.max_minutes <= 0:
        raise ConfigError(f"max_minutes {config.max_minutes}: give a positive training budget")
    torch.manual_seed(config.seed)
    model = build_classifier(num_classes=dataset.num_classes - 1, backbone=config.backbone, weights=config.weights,
                             output_stride=config.output_stride)
    freeze_early_layers(model.backbone, config.freeze_stride)
    net, loss_fn = model, F.multilabel_soft_margin_loss
    if config.equivariance > 0:  # SEAM's regulariser: the same weights, seen at two scales
        from ..models.classifier import ScaleEquivariantTraining, equivariance_loss

        net = ScaleEquivariantTraining(model, config.equivariance_scale)
        loss_fn = equivariance_loss(config.equivariance)
    if config.cutmix > 0:  # CutMix: boxes pasted across the batch, the tags mixed by area
        from ..models.classifier import CutMixTraining, cutmix_loss

        net, loss_fn = CutMixTraining(model, config.cutmix), cutmix_loss
    meta = {"backbone": config.backbone, "output_stride": config.output_stride, "num_classes": model.num_classes,
            "classes": list(dataset.classes), "config": config_to_dict(config)}
    return _fit_on_tags(dataset, ids, model, net, loss_fn, _make_optimizer(model, config), config,
                        Path(out_dir) / CHECKPOINT, Path(out_dir) / TRAIN_LOG, epochs=config.epochs,
                        minutes=config.max_minutes, meta=meta, desc="cam classifier", loader_workers=loader_workers)


def train_recam(dataset: Dataset, out_dir: str | Path, config: CamConfig, base: str | Path, *,
                ids: list[str] | None = None, loader_workers: int = 0) -> Path:
    """ReCAM (Chen et al., CVPR 2022): fine-tune the trained classifier ``base`` for ``config.recam_epochs`` epochs
    with the multi-label loss + ``config.recam_weight`` x the softmax loss of
    :class:`wsss.models.classifier.ReCAMTraining` into ``out_dir/recam.pt`` (resumable like the classifier; a
    complete one is reused); returns its path. Its CAMs are read through ``W' * W``.

    Rates as ReCAM's: the new predictor at ``config.lr``, the classifier's own weights (backbone and ``W``) at a tenth
    of their training rates, poly decay over the fine-tuning; the same augmentation, batch and frozen layers.
    """
    from ..models.backbones import freeze_early_layers
    from ..models.classifier import ReCAMTraining, build_classifier, classifier_state, recam_loss

    if config.recam_epochs < 1 or config.recam_weight <= 0:
        raise ConfigError(f"--recam-epochs {config.recam_epochs}, --recam-weight {config.recam_weight}: give at "
                          "least 1 epoch and a positive weight (ReCAM's: 4 and 1.0)")
    saved = read_checkpoint(base)
    meta = dict(saved["meta"])
    _check_classes(base, meta, dataset.num_classes - 1)
    torch.manual_seed(config.seed)
    model = build_classifier(num_classes=meta["num_classes"], backbone=meta["backbone"],
                             output_stride=int(meta.get("output_stride", 16)), recam=True)
    missing, unexpected = model.load_state_dict(classifier_state(saved["model"]), strict=False)
    if unexpected or set(missing) - {"recam.weight"}:
        raise UnsafeFileError(f"{base}: not a {meta['backbone']} classifier checkpoint (first key that does not fit: "
                              f"{(unexpected or sorted(set(missing) - {'recam.weight'}))[0]}); retrain it")
    freeze_early_layers(model.backbone, config.freeze_stride)
    optimizer = _make_optimizer(model, config, own_scale=0.1)
    meta.update(recam=True, base=str(base), recam_config=config_to_dict(config))
    out_dir = Path(out_dir)
    return _fit_on_tags(dataset, ids, model, ReCAMTraining(model), recam_loss(config.recam_weight), optimizer, config,
                        out_dir / RECAM_CHECKPOINT, out_dir / RECAM_LOG, epochs=config.recam_epochs, minutes=None,
                        meta=meta, desc="recam fine-tuning", loader_workers=loader_workers)


def _fit_on_tags(dataset: Dataset, ids, model, net, loss_fn, optimizer, config: CamConfig, ckpt_path: Path,
                 log_path: Path, *, epochs: int, minutes, meta: dict, desc: str, loader_workers: int) -> Path:
    """Train ``net`` (``model`` or a training view of it) on the tags of ``ids`` with :func:`wsss.fit.fit`, one
    checkpoint (``ckpt_path``) and one ``log_path`` row an epoch; a complete checkpoint is reused, a partial one
    resumed; the unusable images go to ``train_skipped.csv`` beside it."""
    from ..models.classifier import classifier_state
    from ..runtime import resolve_speed, uses_bf16

    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(dataset.ids if ids is None else ids)
    if not ids:
        raise ConfigError(f"{dataset.root}: split {dataset.split!r} has no images to train the classifier on")
    device = pick_device(config.device)
    saved, state = None, FitState()
    if ckpt_path.exists():
        saved = read_checkpoint(ckpt_path)
        if saved.get("complete"):
            log.info("%s: training already complete; reusing it", ckpt_path)
            return ckpt_path
        saved["model"] = classifier_state(saved["model"])  # checkpoints before the backbone contract too
        state = epochs_done(saved)
        log.info("%s: resuming after epoch %d", ckpt_path, state.epoch)
    bf16 = uses_bf16(config.bf16, device)  # --bf16 applies to training and inference alike
    channels_last = resolve_speed(config.channels_last, device, "channels_last")
    ids, skipped = usable_training_ids(dataset, ids)
    write_csv(ckpt_path.parent / SKIPPED, ["image_id", "reason"], [list(s) for s in skipped])
    data = TagDataset(dataset, ids, config, (model.backbone.mean, model.backbone.std))
    batch = min(config.batch_size, len(data))
    meta = {**meta, "train_ids": len(ids)}
    write_bytes(log_path, (LOG_HEADER + "".join(state.rows)).encode())  # the rows up to the checkpoint resumed from

    def epoch_batches(epoch: int):  # the order of an epoch is a function of (seed, epoch): exact resume
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=gen,
                                           num_workers=loader_workers, persistent_workers=False)

    def on_epoch(s: FitState) -> None:
        seen, mean = sum(s.epoch_sizes), np.mean(s.epoch_losses) if s.epoch_losses else math.nan
        s.rows.append(f"{s.epoch},{len(s.epoch_losses)},{seen},{mean:.5f},"
                      f"{s.lr if s.epoch_losses else config.lr:.6f},{seen / max(s.epoch_seconds, 1e-9):.3f},"
                      f"{s.epoch_seconds:.2f},{s.elapsed:.2f}\n")
        log.info("epoch %d: loss %.4f, %.1f img/s", s.epoch, mean, seen / max(s.epoch_seconds, 1e-9))

    def save(s: FitState) -> None:
        # the RNG state and the log rows travel in the checkpoint, so a resume continues both exactly
        # the optimizer state is only for resuming: a finished classifier keeps what inference needs (about half
        # the file: SGD momentum / AdamW moments are one or two more copies of the weights)
        save_checkpoint(ckpt_path, {**training_state(model, None if s.complete else optimizer), "epoch": s.epoch,
                                    "train_seconds": s.elapsed, "complete": s.complete, "meta": meta,
                                    "log": s.rows})
        write_bytes(log_path, (LOG_HEADER + "".join(s.rows)).encode())

    fit(net, optimizer, epoch_batches, loss_fn, lr=config.lr, epochs=epochs, steps_per_epoch=len(data) // batch,
        state=state, restore_from=saved, budget=None if minutes is None else 60.0 * minutes, device=device,
        channels_last=channels_last, bf16=bf16, save=save, on_epoch=on_epoch, desc=desc, unit="batch",
        where=str(ckpt_path))
    mark_complete(ckpt_path, read_checkpoint(ckpt_path))
    return ckpt_path
