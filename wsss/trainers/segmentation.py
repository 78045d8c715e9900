"""DeepLab / model-zoo training on :func:`wsss.fit.fit`: SGD + poly learning rate, cross-entropy with ignore_index
255, checkpoints with exact resume, validation mIoU, CSV log, DistributedDataParallel under ``torchrun``.

Recipe defaults (DeepLab-v2, Chen et al. 2017): SGD momentum 0.9, weight decay 5e-4, base learning rate 2.5e-4 with
poly decay ``(1 - it / max_it) ** 0.9``, 10x learning rate on the head, random scale 0.5-1.5, crop 321, flip.

Exact resume: the checkpoint holds the model, the optimizer (momentum buffers), the iteration and the RNG states;
the data order and every crop are functions of ``(seed, rank, sample position)`` (:class:`wsss.pairs.ResumableSampler`),
so a run stopped at iteration k and resumed ends with the same weights as an uninterrupted run (on CPU, where the
kernels are deterministic).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..conventions import IGNORE
from ..errors import WsssError
from ..fit import FitState, fit, sync_buffers, training_state
from ..fit import train_step as fit_step
from ..io import read_csv, save_checkpoint, write_csv
from ..metrics import confusion_matrix, scores_from_confusion
from ..models.inference import segment
from ..pairs import ResumableSampler
from ..runtime import CHECKPOINT, init_distributed, load_checkpoint

log = logging.getLogger(__name__)

LOG_HEADER = ["iteration", "epoch", "lr", "loss", "seconds", "images_per_second", "val_miou"]


# ------------------------------------------------------------------------------------------ pure pieces
OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(model: nn.Module, *, lr: float, head_lr_mult: float, momentum: float,
                   weight_decay: float, optimizer: str = "sgd") -> torch.optim.Optimizer:
    """Two parameter groups, backbone (``lr``) and head (``lr * head_lr_mult``), for ``optimizer``: ``sgd`` (the
    paper's: momentum, L2 weight decay) or ``adamw`` (Adam with decoupled weight decay; ``momentum`` unused)."""
    from ..models import split_parameters

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    backbone, head = split_parameters(model)
    groups = [{"params": backbone, "lr": lr, "lr_scale": 1.0}, {"params": head, "lr": lr * head_lr_mult,
                                                                "lr_scale": head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, K, H, W) logits against (N, H, W) masks, 255 ignored."""
    return F.cross_entropy(logits, masks, ignore_index=IGNORE)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor, *,
               device: torch.device, channels_last: bool = False, bf16: bool = False) -> torch.Tensor:
    """One SGD step of :func:`train_model` on a batch (:func:`wsss.fit.train_step` with :func:`segmentation_loss`:
    cross-entropy with ``ignore_index=255`` on float32 logits). Returns the loss."""
    return fit_step(net, optimizer, images, masks, segmentation_loss, device=device, channels_last=channels_last,
                    bf16=bf16)


# ------------------------------------------------------------------------------------------ validation
def evaluate_model(model: nn.Module, dataset, ids: list[str], *, device: torch.device, num_classes: int,
                   scales=(1.0,), flip: bool = False, channels_last: bool = False, bf16: bool = False,
                   world: int = 1, rank: int = 0) -> dict:
    """mIoU of ``model`` on the GT of ``ids`` (sharded over ranks, confusion matrices summed)."""
    was_training = model.training
    model.eval()
    cm = np.zeros((num_classes, num_classes + 1), np.int64)
    skipped = []
    for image_id in ids[rank::world]:
        try:
            sample = dataset.load(image_id, gt=True)
        except WsssError as exc:  # an unreadable image or GT mask is left out of the score, not the training's end
            log.warning("validation leaves out %s: %s", image_id, exc)
            skipped.append(image_id)
            continue
        if sample.gt is None:
            continue
        probs = segment(model, sample.image, scales=scales, flip=flip, device=device, channels_last=channels_last,
                        bf16=bf16)
        cm += confusion_matrix(sample.gt, probs.argmax(0).astype(np.uint8), num_classes)
    if world > 1:
        total = torch.from_numpy(cm).to(device)  # nccl reduces GPU tensors only
        dist.all_reduce(total)
        cm = total.cpu().numpy()
    model.train(was_training)
    result = scores_from_confusion(cm, dataset.classes)
    result["images"] = len(ids) - len(skipped)
    if skipped:
        result["skipped"] = skipped
    return result


# ----------------------------------------------------------------------------------------------- loop
@dataclass
class TrainResult:
    iterations: int
    start_iteration: int
    seconds: float
    images_per_second: float | None
    last_loss: float | None
    validation: dict | None
    checkpoint: Path
    stopped_early: bool
    speed: dict = field(default_factory=dict)
    budget_spent: bool = False  # ended by ``max_seconds`` before ``iterations``
    elapsed: float = 0.0        # training seconds over every call, the budget's clock


def train_model(model: nn.Module, pairs, out_dir: Path, *, iterations: int, batch_size: int, lr: float,
                head_lr_mult: float = 10.0, momentum: float = 0.9, weight_decay: float = 5e-4,
                poly_power: float = 0.9, optimizer: str = "sgd", max_seconds: float | None = None,
                seed: int = 0, device: torch.device | None = None,
                channels_last: bool = False, bf16: bool = False, loader_workers: int = 0,
                checkpoint_every: int = 500, log_every: int = 10, val_every: int = 0,
                val_dataset=None, val_ids: list[str] | None = None, stop_at: int | None = None,
                meta: dict | None = None, progress: bool = True,
                epoch_indices: list[int] | None = None) -> TrainResult:
    """Train ``model`` on ``pairs`` (a :class:`wsss.pairs.MaskPairs`) with :func:`wsss.fit.fit`, resuming from
    ``out_dir/checkpoint.pt``.

    ``stop_at`` ends the run early after that iteration (with a checkpoint), e.g. for time-sliced jobs; running
    again continues the same schedule. ``max_seconds`` is a time budget for the whole training (summed over
    resumed calls, kept in the checkpoint): the poly schedule runs over whichever of ``iterations`` and the budget
    runs out first (:func:`budget_poly_lr`), so the rate still decays to 0 and the run ends, complete, when the
    budget is spent. Resume is exact with iterations alone; under a budget the iteration count depends on the
    machine's speed. Validation on ``val_dataset``/``val_ids`` runs every ``val_every``
    iterations (0: only at the end) when given. Under torchrun every rank calls this; only rank 0 writes files.
    ``epoch_indices`` is one epoch's list of pair indices (repeats allowed: repeat-factor sampling), default each
    pair once.
    """
    from torch.utils.data import DataLoader

    out_dir = Path(out_dir)
    device = device or torch.device("cpu")
    rank, world = init_distributed(device)
    optim = make_optimizer(model, lr=lr, head_lr_mult=head_lr_mult, momentum=momentum,
                           weight_decay=weight_decay, optimizer=optimizer)
    ckpt_path, log_path = out_dir / CHECKPOINT, out_dir / "log.csv"
    saved, state = None, FitState()
    if ckpt_path.exists():
        saved = load_checkpoint(ckpt_path, map_location=device)
        state = FitState(step=int(saved["iteration"]), elapsed=float(saved.get("elapsed", 0.0)),
                         budget_spent=bool(saved.get("budget_spent", False)))
        log.info("resuming %s at iteration %d of %d", ckpt_path, state.step, iterations)
    if rank == 0 and log_path.exists():  # keep the rows up to the checkpoint we resume from
        state.rows = [[r[k] for k in LOG_HEADER] for r in read_csv(log_path) if int(r["iteration"]) <= state.step]
    sampler = ResumableSampler(len(pairs), batch_size=batch_size, iterations=iterations, start=state.step, seed=seed,
                               rank=rank, world_size=world, epoch_indices=epoch_indices)
    loader = DataLoader(pairs, batch_size=batch_size, sampler=sampler, num_workers=loader_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    validation = None
    t_log = time.perf_counter()

    def validate() -> dict | None:
        if val_dataset is None or not val_ids:
            return None
        sync_buffers(model, world)
        return evaluate_model(model, val_dataset, val_ids, device=device, num_classes=val_dataset.num_classes,
                              channels_last=channels_last, bf16=bf16, world=world, rank=rank)

    def on_step(s: FitState) -> None:  # a log row every log_every iterations, at the end and with each validation
        nonlocal validation, t_log
        val_now = val_every > 0 and s.step % val_every == 0 and s.step < iterations and not s.budget_spent
        if s.step % log_every == 0 or s.last or val_now:
            now = time.perf_counter()
            if val_now:
                validation = validate()
            recent = s.losses[-log_every:]
            s.rows.append([s.step, sampler.epoch_of(s.step - 1), f"{s.lr:.6g}", f"{float(np.mean(recent)):.5f}",
                           round(s.seconds, 2), round(len(recent) * batch_size * world / max(now - t_log, 1e-9), 3),
                           "" if not val_now or validation is None else validation["miou"]])
            if rank == 0:
                write_csv(log_path, LOG_HEADER, s.rows)
            t_log = time.perf_counter()

    def save(s: FitState) -> None:
        save_checkpoint(ckpt_path, {**training_state(model, optim), "iteration": s.step, "meta": dict(meta or {}),
                                    "elapsed": round(s.elapsed, 3), "budget_spent": s.budget_spent})
        write_csv(log_path, LOG_HEADER, s.rows)

    state = fit(model, optim, loader, segmentation_loss, lr=lr, total_steps=iterations, state=state,
                restore_from=saved, seed=seed, power=poly_power, budget=max_seconds, stop_at=stop_at, device=device,
                channels_last=channels_last, bf16=bf16, distributed=True, checkpoint_every=checkpoint_every,
                save=save, on_step=on_step, progress=progress, desc="train", unit="it", where=str(out_dir))
    if state.complete and val_dataset is not None:
        validation = validate()
        if state.rows:
            state.rows[-1][-1] = validation["miou"] if validation else ""
        if rank == 0:
            write_csv(log_path, LOG_HEADER, state.rows)
    seconds = state.seconds
    return TrainResult(iterations=state.step, start_iteration=state.start_step, seconds=seconds,
                       images_per_second=round(state.images / seconds, 3) if state.images and seconds > 0 else None,
                       last_loss=state.losses[-1] if state.losses else None, validation=validation,
                       checkpoint=ckpt_path, stopped_early=not state.complete, budget_spent=state.budget_spent,
                       elapsed=round(state.elapsed, 2),
                       speed={"channels_last": channels_last, "bf16": bf16, "device": str(device),
                              "world_size": world})
