"""The one training loop of wsss: :func:`fit` trains the CAM classifier (:mod:`wsss.trainers.cam_classifier`), the saliency
net (:func:`wsss.seeds.saliency.train_saliency`) and DeepLab / any zoo model (:func:`wsss.trainers.segmentation.train_model`,
BoxSup's rounds included); each of those is an adapter that builds the model, the batches and the checkpoint's own
keys around it.

One step: inputs to the device (channels_last optional), forward under bf16 autocast (optional), the loss on
float32 outputs, backward, optimizer step. The learning rate follows the poly schedule over the steps or a time
budget, whichever runs out first (:func:`wsss.runtime.budget_poly_lr`); each parameter group trains at its own
multiple of the base rate (its ``lr_scale``: the pretrained backbone 0.1x, DeepLab's head 10x). A non-finite loss
stops training with a :class:`~wsss.errors.StageError` naming the step and the fix, before that step is taken.

Two ways to feed it:

* **iterations** (``batches`` an iterable; DeepLab): ``total_steps`` steps from ``state.step``, a checkpoint every
  ``checkpoint_every`` steps and at the end; the batches are the tail of the stream from that step on
  (:class:`wsss.pairs.ResumableSampler`);
* **epochs** (``batches`` a function ``epoch -> iterable`` and ``epochs``; the classifier, the saliency net): epochs
  ``state.epoch .. epochs - 1``, batch ``k`` of epoch ``e`` at schedule position ``e * steps_per_epoch + k``, a
  checkpoint after every epoch.

Exact resume: a checkpoint holds :func:`training_state` (weights, optimizer state, every RNG's state) next to the
trainer's :class:`FitState` fields (step or epoch, training seconds, log rows); :func:`fit` with ``restore=`` that
checkpoint puts weights, optimizer and RNGs back before the first batch is drawn, so a run stopped at step (or
epoch) k and resumed ends with the weights of an uninterrupted run (on CPU, where the kernels are deterministic).
Under ``torchrun`` (``distributed=True``) the model trains as DistributedDataParallel; rank 0's clock decides the
budget for every rank, its BatchNorm statistics are copied to every rank before a checkpoint, and only rank 0
writes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .errors import StageError
from .progress import progress as progress_bar
from .runtime import (
    bf16_autocast,
    budget_poly_lr,
    init_distributed,
    rng_state,
    set_rng_state,
)

log = logging.getLogger(__name__)


@dataclass
class FitState:
    """Where a training stands. The trainer fills the first fields from its checkpoint, :func:`fit` updates every
    field in place as it trains, and the callbacks read it (``on_step``, ``on_epoch``, ``save``)."""

    step: int = 0               # schedule position: steps done (epoch mode: epoch * steps_per_epoch + batches done)
    epoch: int = 0              # epochs finished (epoch mode)
    elapsed: float = 0.0        # training seconds over every call, the budget's clock
    budget_spent: bool = False  # the time budget ended the schedule
    rows: list = field(default_factory=list)  # the trainer's log rows (saved with its checkpoint)
    # this call
    start_step: int = 0
    losses: list = field(default_factory=list)        # every step's loss
    images: int = 0                                   # images trained on, all ranks
    lr: float = 0.0                                   # base rate of the last step (a group's: x its lr_scale)
    last: bool = False                                # the step just taken is this call's last
    complete: bool = False                            # the schedule is over (every step done, or the budget spent)
    seconds: float = 0.0                              # this call's seconds so far
    epoch_losses: list = field(default_factory=list)  # epoch mode: the running epoch's step losses ...
    epoch_sizes: list = field(default_factory=list)   # ... and batch sizes
    epoch_seconds: float = 0.0                        # ... and its seconds (set when it ends)


# ----------------------------------------------------------------------------------------- checkpoint parts
def training_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """What every trainer's checkpoint holds for an exact resume: ``model`` (the weights, contiguous),
    ``optimizer`` (its state; left out when ``optimizer`` is None: a finished run needs none) and ``rng``
    (:func:`wsss.runtime.rng_state`). Tensors and plain containers only (``weights_only`` loadable)."""
    out = {"model": {k: v.contiguous() for k, v in model.state_dict().items()}}
    if optimizer is not None:
        out["optimizer"] = optimizer.state_dict()
    out["rng"] = rng_state()
    return out


def epochs_done(saved: dict) -> FitState:
    """Where an epoch-mode trainer's checkpoint left off: the ``epoch``, ``train_seconds`` and ``log`` rows that the
    CAM classifier and the affinity head save next to :func:`training_state`."""
    return FitState(epoch=int(saved["epoch"]), elapsed=float(saved["train_seconds"]),
                    rows=list(saved.get("log", [])))


def mark_complete(path, saved: dict) -> None:
    """After :func:`fit`: a checkpoint (``saved``, read back from ``path``) that is not ``complete`` had its budget
    spent before this run started; mark the schedule finished and drop the optimizer state (only a resume needs it)."""
    from .io import save_checkpoint

    if not saved.get("complete"):
        saved["complete"] = True
        saved.pop("optimizer", None)
        save_checkpoint(path, saved)


def restore(saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Put back what :func:`training_state` saved: the weights, the optimizer state (a checkpoint without one, e.g.
    a finished one marked unfinished by hand, starts the optimizer afresh with a warning) and the RNG states (also
    a bare torch RNG tensor, what classifier checkpoints held before)."""
    model.load_state_dict(saved["model"])
    if "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
    else:
        log.warning("no optimizer state to resume from; the optimizer starts afresh")
    rng = saved.get("rng")
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng.cpu())
    elif isinstance(rng, dict):  # RNG states must be CPU tensors, whatever map_location the file was read with
        set_rng_state({k: ([t.cpu() for t in v] if isinstance(v, (list, tuple)) and v and
                           isinstance(v[0], torch.Tensor) else v.cpu() if isinstance(v, torch.Tensor) else v)
                       for k, v in rng.items()})


def sync_buffers(model: nn.Module, world: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank (before a checkpoint or a validation)."""
    if world > 1:
        for buf in model.buffers():
            dist.broadcast(buf.data, 0)


# ------------------------------------------------------------------------------------------------- step
def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, target: torch.Tensor,
               loss_fn: Callable, *, device: torch.device, channels_last: bool = False,
               bf16: bool = False) -> torch.Tensor:
    """One step on a batch: forward (``channels_last`` input, bf16 autocast optional), ``loss_fn(float32 outputs,
    target)``, backward, optimizer step. Returns the (detached) loss; a non-finite loss is returned without the
    backward and the step (nothing after it could recover)."""
    inputs = inputs.to(device, non_blocking=True)
    target = target.to(device, non_blocking=True)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with bf16_autocast(device, bf16):
        outputs = net(inputs)
    # float32 for the loss (bf16 autocast); integer outputs (e.g. CutMix's permutation) stay as they are
    outputs = tuple(o.float() if o.is_floating_point() else o for o in outputs) if isinstance(outputs, tuple) \
        else outputs.float()
    loss = loss_fn(outputs, target)
    if not bool(torch.isfinite(loss)):
        return loss.detach()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------------------------- loop
def fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches, loss_fn: Callable, *, lr: float,
        total_steps: int | None = None, epochs: int | None = None, steps_per_epoch: int | None = None,
        state: FitState | None = None, restore_from: dict | None = None, seed: int | None = None,
        power: float = 0.9, budget: float | None = None, stop_at: int | None = None,
        device: torch.device | None = None, channels_last: bool = False, bf16: bool = False,
        distributed: bool = False, checkpoint_every: int = 0, save: Callable[[FitState], None] | None = None,
        on_step: Callable[[FitState], None] | None = None, on_epoch: Callable[[FitState], None] | None = None,
        progress: bool = True, desc: str = "train", unit: str = "it", where: str = "training") -> FitState:
    """Train ``model`` (the module doc tells the step, the schedule and the two ways to feed it); returns ``state``.

    Parameters
    ----------
    model, optimizer
        The network and its optimizer; each parameter group's ``lr_scale`` (default 1.0) multiplies ``lr``. The
        model is moved to ``device`` (and to channels_last) here, before ``restore_from`` is loaded.
    batches
        Iterations: an iterable of ``(inputs, target)`` batches, at least the steps left. Epochs: a function
        ``epoch -> iterable`` of at most ``steps_per_epoch`` batches.
    loss_fn
        ``loss_fn(outputs float32, target) -> scalar tensor`` (a model giving a tuple: a tuple of float32 tensors).
    lr, power, budget
        Base learning rate, the poly power, a time budget in training seconds (None or 0: none) summed over resumed
        calls (``state.elapsed``). The budget is checked after every step but a call's last; once it is spent the
        schedule is over (``state.budget_spent``, ``state.complete``) and a later call trains no further.
    total_steps, epochs, steps_per_epoch
        Iterations: ``total_steps``. Epochs: ``epochs`` and ``steps_per_epoch`` (``total_steps`` defaults to their
        product).
    state, restore_from, seed
        Where the run stands (:class:`FitState`, from the trainer's checkpoint; default: the start) and the
        checkpoint dict to resume (:func:`restore`); a fresh run seeds torch with ``seed`` when given.
    stop_at
        Iterations: end this call after that step (a checkpoint is written); running again continues the schedule.
    device, channels_last, bf16, distributed
        Where and how to run; ``distributed`` joins torchrun's process group and trains DistributedDataParallel.
    checkpoint_every, save
        ``save(state)`` (rank 0 only) every ``checkpoint_every`` steps and at a call's end (iterations), or after
        every epoch (epochs).
    on_step, on_epoch
        Called after every step (``state.last`` tells the call's last) and after every epoch, before ``save``.
    progress, desc, unit, where
        The progress bar (:func:`wsss.progress.progress`, one over the schedule) and what the error names.
    """
    from torch.nn.parallel import DistributedDataParallel

    state = state or FitState()
    device = device or torch.device("cpu")
    rank, world = init_distributed(device) if distributed else (0, 1)
    if epochs is not None:
        total_steps = total_steps or max(1, epochs * steps_per_epoch)
    scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]  # before a restore replaces groups
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if restore_from is not None:
        restore(restore_from, model, optimizer)
    elif seed is not None:
        torch.manual_seed(seed)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    t0 = time.perf_counter()
    elapsed0 = state.elapsed
    state.start_step, state.losses, state.images, state.last = state.step, [], 0, False

    def clock() -> None:
        state.seconds = time.perf_counter() - t0
        state.elapsed = elapsed0 + state.seconds

    def out_of_time() -> bool:  # rank 0's clock decides for every rank
        clock()
        spent = state.elapsed >= budget
        if world > 1:
            flag = torch.tensor([float(spent)], device=device)
            dist.broadcast(flag, 0)
            spent = bool(flag.item())
        return spent

    def checkpoint() -> None:
        clock()
        sync_buffers(model, world)
        if save is not None and rank == 0:
            save(state)

    def one_step(batch, position: int, final: bool) -> None:
        """Train on ``batch`` at schedule ``position``; ``final``: the last step this call may take."""
        clock()
        factor = budget_poly_lr(1.0, position, total_steps, elapsed=state.elapsed, budget=budget, power=power)
        state.lr = lr * factor
        for group, scale in zip(optimizer.param_groups, scales):
            group["lr"] = state.lr * scale
        inputs, target = batch
        loss = float(train_step(net, optimizer, inputs, target, loss_fn, device=device, channels_last=channels_last,
                                bf16=bf16))
        state.step = position + 1
        if not math.isfinite(loss):  # the last checkpoint stays as it was
            raise StageError(f"{where}: the training loss became {loss} at iteration {state.step}; lower --lr (now "
                             f"{lr:g}) and rerun with --overwrite")
        state.losses.append(loss)
        if epochs is not None:
            state.epoch_losses.append(loss)
            state.epoch_sizes.append(int(inputs.shape[0]))
        state.images += int(inputs.shape[0]) * world
        if budget:  # the bar's total (its % and time left) is where the budget will end the schedule at this pace
            clock()
            pace = state.step / state.elapsed if state.elapsed > 0 else 0.0
            bar.total = min(total_steps, max(state.step + 1, round(pace * budget))) if pace > 0 else total_steps
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{state.lr:.2e}")
        if budget and not final and out_of_time():
            state.budget_spent = True
            bar.total = state.step
            log.info("%s: time budget of %.1f min spent at iteration %d of %d", where, budget / 60, state.step,
                     total_steps)
        state.last = final or state.budget_spent
        state.complete = state.step >= total_steps or state.budget_spent
        clock()
        if on_step is not None:
            on_step(state)

    if epochs is not None:
        state.step = max(state.step, state.epoch * steps_per_epoch)
    unfinished = state.step < total_steps if epochs is None else state.epoch < epochs
    if budget and state.elapsed >= budget and unfinished:
        state.budget_spent = True  # spent before this call (killed after its checkpoint): the schedule is over
    model.train()
    bar = progress_bar(total=total_steps, initial=state.step, desc=desc, unit=unit, enabled=progress and rank == 0)
    if epochs is None:
        end = total_steps if stop_at is None else min(total_steps, stop_at)
        stream = iter(batches) if state.step < end and not state.budget_spent else iter(())
        for batch in stream:
            one_step(batch, state.step, state.step + 1 >= end)
            if (checkpoint_every and state.step % checkpoint_every == 0) or state.last:
                checkpoint()
            if state.last:
                break
        if state.step < end and not state.budget_spent:
            raise ValueError(f"{where}: the batches ran out at iteration {state.step} of {end}")
        state.complete = state.step >= total_steps or state.budget_spent
    else:
        for epoch in range(state.epoch, epochs if not state.budget_spent else state.epoch):
            bar.set_description(f"{desc} epoch {epoch + 1}/{epochs}")
            state.epoch_losses, state.epoch_sizes = [], []
            model.train()
            t_epoch = time.perf_counter()
            for k, batch in enumerate(batches(epoch)):
                position = epoch * steps_per_epoch + k
                one_step(batch, position, epoch + 1 == epochs and k + 1 == steps_per_epoch)
                if state.budget_spent:
                    break
            state.epoch_seconds = time.perf_counter() - t_epoch
            if not state.budget_spent:  # the batches an epoch left out (a lone last one) count on the bar too
                bar.update(max(0, (epoch + 1) * steps_per_epoch - bar.n))
            state.epoch = epoch + 1
            state.complete = state.epoch >= epochs or state.budget_spent
            clock()
            if on_epoch is not None:
                on_epoch(state)
            checkpoint()
            if state.budget_spent:
                break
        state.complete = state.epoch >= epochs or state.budget_spent
    bar.close()
    clock()
    if world > 1:
        dist.barrier()
    return state
