"""The training loop: SGD + poly learning rate, cross-entropy with ignore_index 255, checkpoints with exact resume,
validation mIoU, CSV log, DistributedDataParallel under ``torchrun``.

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

from .errors import StageError, WsssError
from .io import read_csv, save_checkpoint, write_csv
from .labels import IGNORE
from .metrics import confusion_matrix, scores_from_confusion
from .models.inference import segment
from .pairs import ResumableSampler
from .progress import progress as progress_bar
from .runtime import CHECKPOINT, budget_poly_lr, init_distributed, load_checkpoint, rng_state, set_rng_state

log = logging.getLogger(__name__)

LOG_HEADER = ["iteration", "epoch", "lr", "loss", "seconds", "images_per_second", "val_miou"]


# ------------------------------------------------------------------------------------------ pure pieces
OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(model: nn.Module, *, lr: float, head_lr_mult: float, momentum: float,
                   weight_decay: float, optimizer: str = "sgd") -> torch.optim.Optimizer:
    """Two parameter groups, backbone (``lr``) and head (``lr * head_lr_mult``), for ``optimizer``: ``sgd`` (the
    paper's: momentum, L2 weight decay) or ``adamw`` (Adam with decoupled weight decay; ``momentum`` unused)."""
    from .models import split_parameters

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    backbone, head = split_parameters(model)
    groups = [{"params": backbone, "lr": lr, "lr_mult": 1.0}, {"params": head, "lr": lr * head_lr_mult,
                                                               "lr_mult": head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor, *,
               device: torch.device, channels_last: bool = False, bf16: bool = False) -> torch.Tensor:
    """One SGD step on a batch: forward (bf16 autocast optional, channels_last input optional), cross-entropy with
    ``ignore_index=255`` on float32 logits, backward, optimizer step. Returns the loss."""
    images = images.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(images)
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _sync_buffers(model: nn.Module, world: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if world > 1:
        for buf in model.buffers():
            dist.broadcast(buf.data, 0)


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
                meta: dict | None = None, progress: bool = True) -> TrainResult:
    """Train ``model`` on ``pairs`` (a :class:`wsss.pairs.MaskPairs`), resuming from ``out_dir/checkpoint.pt``.

    ``stop_at`` ends the run early after that iteration (with a checkpoint), e.g. for time-sliced jobs; running
    again continues the same schedule. ``max_seconds`` is a time budget for the whole training (summed over
    resumed calls, kept in the checkpoint): the poly schedule runs over whichever of ``iterations`` and the budget
    runs out first (:func:`budget_poly_lr`), so the rate still decays to 0 and the run ends, complete, when the
    budget is spent. Resume is exact with iterations alone; under a budget the iteration count depends on the
    machine's speed. Validation on ``val_dataset``/``val_ids`` runs every ``val_every``
    iterations (0: only at the end) when given. Under torchrun every rank calls this; only rank 0 writes files.
    """
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    out_dir = Path(out_dir)
    device = device or torch.device("cpu")
    rank, world = init_distributed(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=lr, head_lr_mult=head_lr_mult, momentum=momentum,
                               weight_decay=weight_decay, optimizer=optimizer)
    ckpt_path = out_dir / CHECKPOINT
    start = 0
    elapsed0 = 0.0
    budget_spent = False
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        elapsed0 = float(state.get("elapsed", 0.0))
        budget_spent = bool(state.get("budget_spent", False))
        set_rng_state(state["rng"])
        log.info("resuming %s at iteration %d of %d", ckpt_path, start, iterations)
    else:
        torch.manual_seed(seed)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = ResumableSampler(len(pairs), batch_size=batch_size, iterations=iterations, start=start, seed=seed,
                               rank=rank, world_size=world)
    loader = DataLoader(pairs, batch_size=batch_size, sampler=sampler, num_workers=loader_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    log_path = out_dir / "log.csv"
    rows = []
    if rank == 0 and log_path.exists():  # keep the rows up to the checkpoint we resume from
        rows = [[r[k] for k in LOG_HEADER] for r in read_csv(log_path) if int(r["iteration"]) <= start]

    def checkpoint(iteration: int) -> None:
        _sync_buffers(model, world)
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
                "rng": rng_state(), "meta": dict(meta or {}), "elapsed": round(elapsed_now(), 3),
                "budget_spent": budget_spent,
            })
            write_csv(log_path, LOG_HEADER, rows)

    def validate() -> dict | None:
        if val_dataset is None or not val_ids:
            return None
        _sync_buffers(model, world)
        return evaluate_model(model, val_dataset, val_ids, device=device, num_classes=val_dataset.num_classes,
                              channels_last=channels_last, bf16=bf16, world=world, rank=rank)

    t0 = time.perf_counter()

    def elapsed_now() -> float:
        return elapsed0 + time.perf_counter() - t0

    def out_of_time() -> bool:  # rank 0's clock decides for every rank
        spent = bool(max_seconds) and elapsed_now() >= max_seconds
        if world > 1:
            flag = torch.tensor([float(spent)], device=device)
            dist.broadcast(flag, 0)
            spent = bool(flag.item())
        return spent

    model.train()
    end = iterations if stop_at is None else min(iterations, stop_at)
    if budget_spent:  # a finished budgeted run is not trained further
        end = start
    bar = progress_bar(total=iterations, initial=start, desc="train", unit="it", enabled=progress and rank == 0)
    validation = None
    losses: list[float] = []
    t_log = time.perf_counter()
    iteration = start
    done_images = 0
    stream = iter(loader)
    while iteration < end:
        images, masks = next(stream)
        factor = budget_poly_lr(1.0, iteration, iterations, elapsed=elapsed_now(), budget=max_seconds,
                                power=poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"] * factor
        loss = train_step(net, optimizer, images, masks, device=device, channels_last=channels_last, bf16=bf16)
        iteration += 1
        done_images += images.shape[0] * world
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):  # nothing after this can recover; the last checkpoint stays as it was
            raise StageError(f"{out_dir}: the training loss became {losses[-1]} at iteration {iteration}; lower "
                             f"--lr (now {lr:g}) and rerun with --overwrite")
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr * factor:.2e}")
        if max_seconds and iteration < end and out_of_time():
            budget_spent = True
            log.info("time budget of %.1f min spent at iteration %d of %d", max_seconds / 60, iteration, iterations)
            end = iteration
        val_now = val_every > 0 and iteration % val_every == 0 and iteration < iterations and not budget_spent
        if iteration % log_every == 0 or iteration == end or val_now:
            now = time.perf_counter()
            if val_now:
                validation = validate()
            recent = losses[-log_every:]
            rows.append([iteration, sampler.epoch_of(iteration - 1), f"{lr * factor:.6g}",
                         f"{float(np.mean(recent)):.5f}", round(now - t0, 2),
                         round(len(recent) * batch_size * world / max(now - t_log, 1e-9), 3),
                         "" if not val_now or validation is None else validation["miou"]])
            if rank == 0:
                write_csv(log_path, LOG_HEADER, rows)
            t_log = time.perf_counter()
        if iteration % checkpoint_every == 0 or iteration == end:
            checkpoint(iteration)
    bar.close()
    seconds = time.perf_counter() - t0
    finished = iteration >= iterations or budget_spent
    if finished and val_dataset is not None:
        validation = validate()
        if rows:
            rows[-1][-1] = validation["miou"] if validation else ""
        if rank == 0:
            write_csv(log_path, LOG_HEADER, rows)
    if world > 1:
        dist.barrier()
    return TrainResult(iterations=iteration, start_iteration=start, seconds=seconds,
                       images_per_second=round(done_images / seconds, 3) if done_images and seconds > 0 else None,
                       last_loss=losses[-1] if losses else None, validation=validation, checkpoint=ckpt_path,
                       stopped_early=not finished, budget_spent=budget_spent, elapsed=round(elapsed_now(), 2),
                       speed={"channels_last": channels_last, "bf16": bf16, "device": str(device),
                              "world_size": world})
