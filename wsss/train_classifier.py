"""Training the GAP-CAM classifier on image-level tags (multi-label soft-margin loss), with checkpoint and resume.

Everything lives in one folder (the cam stage folder): ``classifier.pt`` (model + optimizer + epoch; written
atomically after every epoch, ``complete`` once training ended) and ``train_log.csv`` (one row per epoch). A run
that is killed resumes from the last finished epoch (the checkpoint carries torch's RNG state, which the
augmentation draws from, so the resumed run ends with the same weights); a complete checkpoint is reused as is.
Images that cannot be loaded (unreadable, truncated, broken annotation) are left out before training and listed in
``train_skipped.csv``; the per-image pass then lists them as failures.

Augmentation (:func:`wsss.pairs.augment_tagged`): random rescale (long side drawn in ``resize_long``), random crop
of ``crop_size`` (zero-padded when smaller), horizontal flip, colour jitter, the backbone's input normalisation.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .config import CamConfig, config_to_dict
from .datasets import Dataset
from .errors import ConfigError, DatasetError, ImageError, UnsafeFileError, WsssError
from .io import load_checkpoint, save_checkpoint, write_bytes, write_csv
from .progress import progress
from .runtime import pick_device

log = logging.getLogger(__name__)

CHECKPOINT = "classifier.pt"
TRAIN_LOG = "train_log.csv"
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
        from .pairs import augment_tagged

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


def load_classifier(path: str | Path, *, num_classes: int | None = None, device: torch.device | str = "cpu"):
    """The trained :class:`CAMClassifier` from ``path`` in eval mode; ``num_classes`` (foreground) is checked."""
    from .models.classifier import build_classifier

    state = read_checkpoint(path)
    meta = state["meta"]
    if num_classes is not None and meta["num_classes"] != num_classes:
        raise ConfigError(f"{path}: classifier has {meta['num_classes']} foreground classes but the dataset has "
                          f"{num_classes}; use a checkpoint trained on this class list or retrain")
    from .models.classifier import classifier_state

    model = build_classifier(num_classes=meta["num_classes"], backbone=meta["backbone"],
                             output_stride=int(meta.get("output_stride", 16)))
    model.load_state_dict(classifier_state(state["model"]))  # checkpoints before the backbone contract too
    return model.to(device).eval()


def _param_groups(model, config: CamConfig):
    from .models.backbones import backbone_lr_scale

    scale = backbone_lr_scale(config.backbone_lr_scale, config.weights, config.backbone)
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]  # frozen layers: none
    return [{"params": body, "lr_scale": scale}, {"params": head, "lr_scale": 1.0}]


def _make_optimizer(model, config: CamConfig):
    groups = _param_groups(model, config)
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
    """Train (or resume, or reuse) the classifier of ``config`` on ``dataset``'s tags; returns the checkpoint path.

    ``ids`` restricts training to those images (default: every id of ``dataset``). ``loader_workers`` > 0 decodes
    and augments in that many processes.
    """
    from .models.backbones import freeze_early_layers
    from .models.classifier import build_classifier
    from .runtime import bf16_autocast, budget_poly_lr, uses_bf16

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    ids = list(dataset.ids if ids is None else ids)
    if not ids:
        raise ConfigError(f"{dataset.root}: split {dataset.split!r} has no images to train the classifier on")
    num_classes = dataset.num_classes - 1
    if config.epochs < 1 or config.batch_size < 1 or config.crop_size < 8:
        raise ConfigError(f"epochs {config.epochs}, batch_size {config.batch_size}, crop_size {config.crop_size}: "
                          "need epochs >= 1, batch_size >= 1, crop_size >= 8")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = build_classifier(num_classes=num_classes, backbone=config.backbone, weights=config.weights,
                             output_stride=config.output_stride)
    freeze_early_layers(model.backbone, config.freeze_stride)
    optimizer = _make_optimizer(model, config)
    start_epoch, train_seconds, log_rows = 0, 0.0, []
    if ckpt_path.exists():
        state = read_checkpoint(ckpt_path)
        if state.get("complete"):
            log.info("%s: training already complete; reusing it", ckpt_path)
            return ckpt_path
        from .models.classifier import classifier_state

        model.load_state_dict(classifier_state(state["model"]))
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:  # a finished checkpoint keeps no optimizer state; one marked unfinished by hand resumes without it
            log.warning("%s: no optimizer state to resume from; the optimizer starts afresh", ckpt_path)
        start_epoch, train_seconds = int(state["epoch"]), float(state["train_seconds"])
        log_rows = list(state.get("log", []))
        if "rng" in state:  # the augmentation draws from torch's global RNG: continue its stream (exact resume)
            torch.set_rng_state(state["rng"])
        log.info("%s: resuming after epoch %d", ckpt_path, start_epoch)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    bf16 = uses_bf16(config.precision, device)  # --precision applies to training and inference alike
    ids, skipped = usable_training_ids(dataset, ids)
    write_csv(out_dir / SKIPPED, ["image_id", "reason"], [list(s) for s in skipped])
    data = TagDataset(dataset, ids, config, (model.backbone.mean, model.backbone.std))
    batch = min(config.batch_size, len(data))
    steps_per_epoch = len(data) // batch
    total_steps = steps_per_epoch * config.epochs
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    meta = {"backbone": config.backbone, "output_stride": config.output_stride, "num_classes": num_classes, "classes": list(dataset.classes),
            "config": config_to_dict(config), "train_ids": len(ids)}
    log_path = out_dir / TRAIN_LOG
    write_bytes(log_path, (LOG_HEADER + "".join(log_rows)).encode())  # the rows up to the checkpoint resumed from
    if budget is not None and budget <= 0:
        raise ConfigError(f"max_minutes {config.max_minutes}: give a positive training budget")
    for epoch in range(start_epoch, config.epochs):
        if budget is not None and train_seconds >= budget:
            break
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=gen,
                                             num_workers=loader_workers, persistent_workers=False)
        model.train()
        t_epoch = time.perf_counter()
        losses, seen, lr = [], 0, config.lr
        bar = progress(loader, total=steps_per_epoch, desc=f"cam classifier epoch {epoch + 1}/{config.epochs}",
                       unit="batch", leave=False)
        for step, (images, targets) in enumerate(bar):
            elapsed = train_seconds + time.perf_counter() - t_epoch
            if budget is not None and elapsed >= budget:
                break
            lr = budget_poly_lr(config.lr, epoch * steps_per_epoch + step, total_steps, elapsed=elapsed,
                                budget=budget)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            images = images.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with bf16_autocast(device, bf16):
                logits = model(images)
            loss = F.multilabel_soft_margin_loss(logits.float(), targets.to(device))
            if not torch.isfinite(loss):
                raise WsssError(f"classifier loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seen += images.shape[0]
            rate = seen / max(1e-9, time.perf_counter() - t_epoch)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", img_s=f"{rate:.1f}")
        bar.close()
        epoch_seconds = time.perf_counter() - t_epoch
        train_seconds += epoch_seconds
        finished = epoch + 1 >= config.epochs or (budget is not None and train_seconds >= budget)
        row = (f"{epoch + 1},{len(losses)},{seen},{np.mean(losses) if losses else math.nan:.5f},{lr:.6f},"
               f"{seen / max(epoch_seconds, 1e-9):.3f},{epoch_seconds:.2f},{train_seconds:.2f}\n")
        log_rows.append(row)
        # the RNG state and the log rows travel in the checkpoint, so a resume continues both exactly
        # the optimizer state is only for resuming: a finished classifier keeps what inference needs (about half
        # the file: SGD momentum / AdamW moments are one or two more copies of the weights)
        save_checkpoint(ckpt_path, {"model": {k: v.contiguous() for k, v in model.state_dict().items()},
                                    **({} if finished else {"optimizer": optimizer.state_dict()}), "epoch": epoch + 1,
                                    "train_seconds": train_seconds, "complete": finished, "meta": meta,
                                    "rng": torch.get_rng_state(), "log": log_rows})
        write_bytes(log_path, (LOG_HEADER + "".join(log_rows)).encode())
        log.info("epoch %d: loss %.4f, %.1f img/s", epoch + 1, np.mean(losses) if losses else math.nan,
                 seen / max(epoch_seconds, 1e-9))
        if finished:
            break
    state = read_checkpoint(ckpt_path)
    if not state.get("complete"):  # the budget was spent before this run started: mark the schedule finished
        state["complete"] = True
        state.pop("optimizer", None)
        save_checkpoint(ckpt_path, state)
    return ckpt_path
