"""``wsss train --model M --labels STAGE``: train a segmentation model on any mask stage folder (or GT) into
``RUN/train/<model>/`` (stage.json, checkpoint.pt, log.csv).

The training loop itself is :func:`wsss.train.train_model`; this runner resolves the inputs, prepares the stage
folder (config hash, refusal of a folder made with another config), builds the model and records the outcome.

Bad pairs (unreadable or truncated image, mask of another size, mask values outside ``{0..K-1, 255}``, no mask in
the source, duplicate or unsafe ids) are found before the first iteration (:class:`wsss.pairs.MaskPairs`), left out
with an error naming the file and the fix, listed in ``stage.json`` (``failures``, ``counts``; status
``complete_with_failures``), and training runs on the rest; ``wsss train`` then exits 1 with a summary, as the
per-image stages do. A split with no usable pair at all is a :class:`~wsss.errors.DatasetError` (exit 2) before
anything is trained. ``pairs_checked.json`` caches each pair's check (keyed by file size and mtime).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, config_to_dict
from ..datasets import Dataset
from ..errors import ConfigError, StageError, WsssError
from ..folders import StageFolder
from ..io import read_json, write_json
from .runner import prepare_stage_dir

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    stage_dir: Path
    checkpoint: Path
    iterations: int
    start_iteration: int
    seconds: float
    images_per_second: float | None
    validation: dict | None
    stopped_early: bool
    speed: dict
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason) of the pairs left out
    budget_spent: bool = False  # ended by --max-minutes before --iterations


def resolve_labels(labels: str, run_dir: Path) -> StageFolder | None:
    """``gt`` -> None (the dataset's GT masks); else a stage folder path, tried as given and under ``run_dir``."""
    if labels.lower() == "gt":
        return None
    for candidate in (Path(labels), Path(run_dir) / labels):
        if candidate.is_dir():
            return StageFolder.open(candidate)
    raise StageError(f"--labels {labels}: no such stage folder (tried {labels} and {Path(run_dir) / labels}); "
                     "give a mask stage folder such as seeds/threshold, or 'gt' for the dataset's GT masks")


def run_train(model_name: str, config: TrainConfig, dataset: Dataset, run_dir: Path, *,
              labels: str | StageFolder = "gt", val_dataset: Dataset | None = None, device: str = "auto",
              stop_at: int | None = None, overwrite: bool = False, progress: bool = True,
              stage_dir: Path | None = None, digest: str | None = None, init_from: Path | None = None,
              extra_meta: dict | None = None) -> TrainSummary:
    """Train ``model_name`` on ``dataset`` with the masks of ``labels`` into ``run_dir/train/<model_name>/``.

    Re-running the same command resumes from ``checkpoint.pt`` (same schedule); a finished run is not retrained.
    Under torchrun every rank calls this; rank 0 writes the files.

    BoxSup's rounds train through here too: ``stage_dir`` (instead of ``run_dir/train/<model_name>``), ``digest``
    (the config hash of a folder the caller prepared with its own identity; None: prepared here from ``config``),
    ``init_from`` (a checkpoint whose weights a run without its own checkpoint starts from) and ``extra_meta``
    (more keys for the checkpoint's meta).
    """
    import torch

    from ..models import MODELS, build_model, resolve_backbone
    from ..models.inference import input_normalisation
    from ..pairs import CHECK_CACHE, MaskPairs, repeat_factors, repeated_indices
    from ..runtime import (
        CHECKPOINT,
        dist_env,
        load_checkpoint,
        pick_device,
        resolve_speed,
    )
    from ..trainers.segmentation import train_model

    if model_name not in MODELS:
        raise ConfigError(f"--model {model_name!r}: choose one of {', '.join(sorted(MODELS))}")
    if config.iterations < 1 or config.batch_size < 1 or config.crop_size < 8:
        raise ConfigError("--iterations and --batch-size must be >= 1 and --crop-size >= 8")
    if config.max_minutes < 0:
        raise ConfigError(f"--max-minutes {config.max_minutes:g}: give a positive budget, or 0 for none")
    if not 0 < config.scale_min <= config.scale_max:
        raise ConfigError(f"--scale-min {config.scale_min} / --scale-max {config.scale_max}: need "
                          "0 < scale-min <= scale-max")
    if config.repeat_threshold < 0:
        raise ConfigError(f"--repeat-threshold {config.repeat_threshold}: give 0 (off) or a share in (0, 1], "
                          "e.g. 0.1")
    model_kwargs = model_options(model_name, config)
    run_dir = Path(run_dir)
    folder = labels if isinstance(labels, StageFolder) else resolve_labels(labels, run_dir)
    stage_dir = Path(stage_dir) if stage_dir is not None else run_dir / "train" / model_name
    upstream = {"labels": folder} if folder is not None else {}
    if digest is None:
        digest = prepare_stage_dir(stage_dir, stage="train", method=model_name, config=config, dataset=dataset,
                                   upstream=upstream, overwrite=overwrite)
    ckpt = stage_dir / CHECKPOINT
    rank = dist_env()[0]
    torch.manual_seed(config.seed)
    backbone = resolve_backbone(model_name, config.backbone)
    model = build_model(model_name, num_classes=dataset.num_classes, backbone=backbone, weights=config.weights,
                        **model_kwargs)
    if init_from is not None and not ckpt.exists():  # an interrupted run resumes from its own checkpoint instead
        model.load_state_dict(load_checkpoint(init_from)["model"])
    pairs = MaskPairs(dataset, folder, crop_size=config.crop_size,
                      scale_range=(config.scale_min, config.scale_max), flip=config.flip,
                      check_cache=stage_dir / CHECK_CACHE, write_cache=rank == 0,
                      check_threads=max(1, config.loader_workers), progress=progress and rank == 0,
                      normalisation=input_normalisation(model))
    failed = list(pairs.failures)
    if rank == 0:
        record_pair_failures(stage_dir, len(pairs), failed)
    epoch_indices, sampling = None, None
    if config.repeat_threshold > 0:
        factors = repeat_factors(pairs.class_presence(), config.repeat_threshold)
        epoch_indices = repeated_indices(factors, seed=config.seed)
        sampling = {"repeat_threshold": config.repeat_threshold, "epoch_samples": len(epoch_indices),
                    "pairs": len(pairs), "repeated_pairs": int((factors > 1).sum()),
                    "max_repeat_factor": round(float(factors.max()), 3)}
        log.info("repeat-factor sampling (t=%g): an epoch is %d samples of %d pairs (%d repeated, up to %.2fx)",
                 config.repeat_threshold, len(epoch_indices), len(pairs), sampling["repeated_pairs"],
                 sampling["max_repeat_factor"])
    pairs_digest = hashlib.sha1("\n".join(pairs.ids).encode()).hexdigest()[:16]
    dev = pick_device(device)
    speed = {"channels_last": resolve_speed(config.channels_last, dev, "channels_last", backbone),
             "bf16": resolve_speed(config.bf16, dev, "bf16", backbone)}
    if ckpt.exists():  # a resumed run keeps the numerics it started with
        old = load_checkpoint(ckpt)["meta"]
        speed = {k: bool(old.get("speed", {}).get(k, v)) for k, v in speed.items()}
        if old.get("pairs_digest") not in (None, pairs_digest):
            log.warning("%s: the usable training pairs differ from those this checkpoint was trained on (files "
                        "fixed, added or damaged since); training continues, but the sample order is no longer "
                        "that of an uninterrupted run", ckpt)
    meta = {"model": model_name, "backbone": backbone, "num_classes": dataset.num_classes,
            "classes": list(dataset.classes), "palette_name": dataset.palette_name, "speed": speed,
            "config_hash": digest, "config": config_to_dict(config), "pairs_digest": pairs_digest,
            "model_kwargs": model_kwargs, "train_images": len(pairs), **(extra_meta or {})}
    val_ids = [i for i in val_dataset.ids if val_dataset.gt_path(i) is not None] if val_dataset is not None else []
    if val_dataset is not None and not val_ids:
        raise StageError(f"{val_dataset.root}: split {val_dataset.split!r} has no GT masks to validate on; "
                         "choose another --val-split or leave it out")
    t0 = time.time()
    try:
        result = train_model(
            model, pairs, stage_dir, iterations=config.iterations, batch_size=config.batch_size, lr=config.lr,
            head_lr_mult=config.head_lr_mult, momentum=config.momentum, weight_decay=config.weight_decay,
            poly_power=config.poly_power, optimizer=config.optimizer,
            max_seconds=config.max_minutes * 60 if config.max_minutes else None, seed=config.seed, device=dev,
            channels_last=speed["channels_last"], bf16=speed["bf16"], loader_workers=config.loader_workers,
            checkpoint_every=config.checkpoint_every,
            val_every=config.val_every, val_dataset=val_dataset if val_ids else None, val_ids=val_ids,
            stop_at=stop_at, meta=meta, progress=progress, epoch_indices=epoch_indices,
        )
    except WsssError as exc:  # the folder says why it stopped instead of staying at 'running'
        if rank == 0:
            info = read_json(stage_dir / "stage.json")
            info.update({"status": "failed", "error": str(exc)})
            write_json(stage_dir / "stage.json", info)
        raise
    if rank == 0:
        info = read_json(stage_dir / "stage.json")
        info.update({
            "status": "stopped" if result.stopped_early else "complete_with_failures" if failed else "complete",
            "training": {"iterations_done": result.iterations, "iterations": config.iterations,
                         "resumed_from": result.start_iteration, "train_images": len(pairs),
                         "ended_by": ("stop" if result.stopped_early else "time budget" if result.budget_spent
                                      else "iterations"),
                         "training_seconds": result.elapsed,
                         "labels": "gt" if folder is None else str(folder.path),
                         "seconds_this_run": round(result.seconds, 2),
                         "images_per_second": result.images_per_second, "last_loss": result.last_loss,
                         "sampling": sampling,
                         **result.speed},
            "quality": result.validation if result.validation else info.get("quality"),
            "validation": ({"split": val_dataset.split, "images": len(val_ids)} if val_ids else None),
            "checkpoint": CHECKPOINT, "log": "log.csv",
            "wall_seconds_total": round(info.get("wall_seconds_total", 0) + time.time() - t0, 2),
        })
        write_json(stage_dir / "stage.json", info)
    return TrainSummary(stage_dir, result.checkpoint, result.iterations, result.start_iteration, result.seconds,
                        result.images_per_second, result.validation, result.stopped_early, result.speed, failed,
                        result.budget_spent)


def model_options(model_name: str, config: TrainConfig) -> dict:
    """The builder keywords a train config sets beyond the backbone: ``output_stride`` where the builder takes
    one (0 leaves the model's own). Saved in the checkpoint's meta, so ``wsss predict`` rebuilds the same net."""
    import inspect

    from ..models import MODELS

    if not config.output_stride:
        return {}
    if "output_stride" not in inspect.signature(MODELS[model_name]).parameters:
        raise ConfigError(f"--output-stride {config.output_stride}: {model_name} has a fixed output stride; "
                          "leave the option out (0)")
    return {"output_stride": config.output_stride}


def record_pair_failures(stage_dir: Path, usable: int, failed: list[tuple[str, str]]) -> None:
    """Write the check's outcome into ``stage.json`` before training starts (``counts`` and ``failures`` in the
    shape of the per-image stages), so a killed or stopped run lists them too; log each failure."""
    info = read_json(stage_dir / "stage.json")
    info.update({"counts": {"images": usable + len(failed), "ok": usable, "failed": len(failed)},
                 "failures": [{"image_id": i, "reason": why} for i, why in failed]})
    write_json(stage_dir / "stage.json", info)
    for image_id, why in failed[:10]:
        log.warning("training pair left out: %s: %s", image_id, why)
    if len(failed) > 10:
        log.warning("... and %d more training pairs left out (all listed in %s)", len(failed) - 10,
                    stage_dir / "stage.json")

