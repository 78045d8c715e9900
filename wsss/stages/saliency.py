"""``wsss seeds --method saliency``: training-set preparation, checkpoint/log/resume and the per-image job.

Files in the stage folder (besides the contract's ``stage.json``, ``manifest.csv``, ``masks/``, ``scores/``):

* ``targets/<id>.png``: the cached training target of each training image (0 background, 1 salient, 255 ignore) at
  the network's input size; a killed run does not redo GrabCut for images already cached;
* ``checkpoint.pt``: model + optimizer + finished epochs, written atomically after every epoch (resume point);
* ``saliency.pt``: the trained model (``--checkpoint`` of a later stage), written when training has finished;
* ``train_log.csv``: epoch, mean loss, seconds of training so far;
* ``saliency/<id>.png``: the 8-bit saliency map of each image for a quick look.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import SaliencyConfig, config_to_dict
from ..datasets import Dataset, Sample
from ..errors import ConfigError, ImageError, StageError, UnsafeFileError
from ..io import load_checkpoint, read_mask, save_checkpoint, write_csv, write_png
from ..progress import progress
from .runner import ImageResult, load_once

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FINAL = "saliency.pt"
TRAIN_LOG = "train_log.csv"


def read_saliency_checkpoint(path: str | Path) -> dict:
    """Load a saliency checkpoint through :func:`wsss.io.load_checkpoint` (``weights_only=True``); unsafe or foreign
    files are refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: saliency checkpoint not found; give the saliency.pt of a saliency stage folder "
                          "or leave --checkpoint out to train")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "backbone" not in state:
        raise UnsafeFileError(f"{path}: not a wsss saliency checkpoint (keys model/backbone missing); retrain it")
    return state


def load_saliency_net(path: str | Path):
    """The :class:`~wsss.models.saliency_net.SaliencyNet` stored in ``path``, in eval mode."""
    from ..models.saliency_net import saliency_net

    state = read_saliency_checkpoint(path)
    net = saliency_net(backbone=str(state["backbone"]))
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UnsafeFileError(f"{path}: weights do not fit a {state['backbone']} SaliencyNet ({exc}); retrain") from None
    return net.eval()


def _training_set(config: SaliencyConfig, dataset: Dataset) -> Dataset:
    from ..datasets import open_dataset

    if config.saliency_data is None:
        if config.saliency_split is None or config.saliency_split == dataset.split:
            return dataset
        return open_dataset(dataset.root, config.saliency_split)
    return open_dataset(config.saliency_data, config.saliency_split)


def prepare_training_data(config: SaliencyConfig, train_set: Dataset, stage_dir: Path):
    """Images resized to ``input_size`` and their targets (cached in ``targets/``); skips unusable images."""
    from ..seeds.saliency import (
        mask_targets,
        resize_pair,
        scale_boxes,
        targets_from_boxes,
    )

    size = config.input_size
    images, targets, skipped, any_box = [], [], [], False
    for image_id in progress(train_set.ids, desc="saliency targets", unit="img"):
        cache = stage_dir / "targets" / f"{image_id}.png"
        try:
            sample = train_set.load(image_id, image=True, gt=config.targets == "masks")
            small, _ = resize_pair(sample.image, None, size)
            any_box |= len(sample.boxes) > 0
            if cache.exists():
                target = read_mask(cache)
            elif config.targets == "masks":
                if sample.gt is None:
                    raise ImageError(f"{train_set.root}: no mask for {image_id!r}; --targets masks needs a mask "
                                     "for every training image")
                _, target = resize_pair(sample.image, mask_targets(sample.gt), size)
            else:
                boxes = scale_boxes(sample.boxes, sample.image.shape[:2], size)
                target = targets_from_boxes(small, boxes, iterations=config.grabcut_iterations)
            if not cache.exists():
                write_png(cache, target)
        except ImageError as exc:
            skipped.append((image_id, str(exc)))
            continue
        images.append(small)
        targets.append(target)
    if config.targets == "boxes" and not any_box:
        raise ConfigError(f"{train_set.root}: no training image has boxes; use --targets masks (a dataset with "
                          "masks) or --saliency-data with a boxed dataset")
    if not images:
        raise StageError(f"{train_set.root}: no usable saliency training image ({skipped[:3]})")
    for image_id, why in skipped:
        log.warning("saliency training skips %s: %s", image_id, why)
    return images, targets, skipped


def train_saliency_stage(config: SaliencyConfig, dataset: Dataset, stage_dir: Path) -> Path:
    """Train (or resume, or reuse) the saliency net of the stage folder; returns the path of ``saliency.pt``."""
    import torch

    from ..models.saliency_net import saliency_net
    from ..seeds.saliency import make_optimizer, train_saliency

    final = stage_dir / FINAL
    if final.exists():
        log.info("%s: training already complete; reusing it", final)
        return final
    train_set = _training_set(config, dataset)
    images, targets, skipped = prepare_training_data(config, train_set, stage_dir)
    torch.manual_seed(config.seed)
    from ..models.backbones import backbone_lr_scale

    net = saliency_net(backbone=config.backbone, weights=config.weights)
    scale = backbone_lr_scale(config.backbone_lr_scale, config.weights, config.backbone)
    optimizer = make_optimizer(net, lr=config.lr, weight_decay=config.weight_decay, backbone_lr_scale=scale)
    ckpt_path, log_path = stage_dir / CHECKPOINT, stage_dir / TRAIN_LOG
    start, rows, spent = 0, [], 0.0
    if ckpt_path.exists():
        state = read_saliency_checkpoint(ckpt_path)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
        rows = [list(r) for r in state.get("log", [])]
        spent = float(rows[-1][2]) if rows else 0.0
        log.info("%s: resuming after epoch %d", ckpt_path, start)
    budget = config.max_minutes * 60 if config.max_minutes else None
    if budget is not None and spent >= budget:
        start = config.epochs  # the time budget was spent before the kill: training is over
    meta = {"backbone": config.backbone, "input_size": config.input_size,
            "train_set": str(train_set.root), "train_split": str(train_set.split), "train_images": len(images)}
    t0 = time.perf_counter() - spent

    def on_epoch(epoch: int, loss: float) -> None:
        rows.append([epoch + 1, round(loss, 6), round(time.perf_counter() - t0, 2)])
        save_checkpoint(ckpt_path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                    "epoch": epoch + 1, "log": rows, **meta})
        write_csv(log_path, ["epoch", "mean_loss", "seconds"], rows)
        log.info("saliency epoch %d: loss %.4f", epoch + 1, loss)

    train_saliency(net, optimizer, images, targets, epochs=config.epochs, batch_size=config.batch_size,
                   lr=config.lr, start_epoch=start, seed=config.seed, on_epoch=on_epoch, max_seconds=budget,
                   spent_seconds=spent)
    save_checkpoint(final, {"model": net.state_dict(), "epoch": int(rows[-1][0]) if rows else 0, "log": rows,
                            "config": config_to_dict(config), **meta})
    write_csv(log_path, ["epoch", "mean_loss", "seconds"], rows)
    if skipped:
        write_csv(stage_dir / "train_skipped.csv", ["image_id", "reason"], [list(s) for s in skipped])
    return final


@dataclass
class SaliencyJob:
    """Saliency map + seed mask of one image (picklable: the net loads lazily in each worker)."""

    checkpoint: str
    config: SaliencyConfig
    needs_image = True
    uses_torch = True  # the runner caps each pool worker's torch threads

    def net(self):
        return load_once(self.checkpoint, lambda: load_saliency_net(self.checkpoint))

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..seeds.saliency import (
            SALIENCY_CLASS_ID,
            predict_saliency,
            saliency_seed_mask,
            saliency_to_png,
        )

        sal = predict_saliency(self.net(), sample.image, input_size=self.config.input_size, flip=self.config.flip)
        mask = saliency_seed_mask(sal, sample.image_labels, saliency_threshold=self.config.saliency_threshold)
        return ImageResult(mask, scores=sal[None], class_ids=np.array([SALIENCY_CLASS_ID]),
                           pngs={"saliency": saliency_to_png(sal)})


def saliency_stage_info(config: SaliencyConfig, *, stage_dir: Path, dataset: Dataset) -> dict:
    """``stage.json`` entries of a finished saliency stage:

    * ``saliency_training``: the images the net learned from (dataset, split, count) and how many of the images this
      stage labels are among them: a tag-only chain needs 0 (train it on another split or dataset with
      ``--saliency-split`` / ``--saliency-data``); a warning says so otherwise;
    * ``saliency_quality`` (when the dataset has GT): the maps as foreground vs background against the GT's object
      pixels (:class:`~wsss.seeds.saliency.SaliencyQuality`: foreground IoU / precision / recall at
      ``--saliency-threshold``, MAE, F-measures), read back from ``saliency/<id>.png``.
    """
    from ..datasets import open_dataset
    from ..io import read_csv
    from ..seeds.saliency import SaliencyQuality

    stage_dir = Path(stage_dir)
    state = read_saliency_checkpoint(config.checkpoint or stage_dir / FINAL)
    training = {"dataset": state.get("train_set"), "split": state.get("train_split"),
                "images": state.get("train_images"), "labelled_images_seen_in_training": None}
    if state.get("train_set") and Path(str(state["train_set"])).resolve() == Path(dataset.root).resolve():
        split = state.get("train_split")
        seen = set(open_dataset(dataset.root, None if split in (None, "None") else str(split)).ids)
        overlap = len(seen & set(dataset.ids))
        training["labelled_images_seen_in_training"] = overlap
        if overlap:
            log.warning("%s: the saliency net learned from the boxes of %d of the %d images it labels: a chain "
                        "fed by it is not tag-only; train it on another split or dataset (--saliency-split / "
                        "--saliency-data)", stage_dir, overlap, len(dataset.ids))
    elif state.get("train_set"):
        training["labelled_images_seen_in_training"] = 0  # another dataset
    quality = SaliencyQuality(threshold=config.saliency_threshold)
    for row in read_csv(stage_dir / "manifest.csv"):
        path = stage_dir / "saliency" / f"{row['image_id']}.png"
        if row.get("status") != "ok" or dataset.gt_path(row["image_id"]) is None or not path.exists():
            continue
        try:
            gt = dataset.load_gt(row["image_id"])
        except ImageError as exc:
            log.warning("saliency quality leaves out %s: %s", row["image_id"], exc)
            continue
        saliency = read_mask(path).astype(np.float32) / 255.0
        if saliency.shape == gt.shape:
            quality.add(saliency, gt)
    result = quality.result()
    return {"saliency_training": training, "saliency_quality": result if result["images"] else None}


def make_saliency_job(config: SaliencyConfig, *, stage_dir, dataset: Dataset, workers: int = 1, **_) -> SaliencyJob:
    """Train into the stage folder (resumable) unless ``--checkpoint`` is given; then the per-image job."""
    if config.input_size < 32:
        raise ConfigError(f"--input-size {config.input_size}: give at least 32 pixels (the encoder has stride 32)")
    if config.epochs < 1 or config.batch_size < 2:
        raise ConfigError("--epochs must be >= 1 and --batch-size >= 2 (BatchNorm needs two images a step)")
    if config.checkpoint:
        checkpoint = config.checkpoint
    else:
        checkpoint = str(train_saliency_stage(config, dataset, Path(stage_dir)))
    read_saliency_checkpoint(checkpoint)  # fail early, once, with a clear message (not once per image)
    return SaliencyJob(str(Path(checkpoint).resolve()), config)
