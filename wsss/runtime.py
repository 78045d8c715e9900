"""Runtime plumbing shared by every trainer and every stage that runs a network: the device, the numeric
precision, torchrun's distributed environment, learning-rate schedules, RNG state and the wsss checkpoint format.

This is the floor below ``models/``, ``seeds/``, ``label/``, the trainers and ``stages/`` (it imports only
``io`` and ``errors``): whatever two of them need about how to run, not what to compute, lives here.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, StageError, UnsafeFileError
from .io import load_checkpoint as _load_torch

CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------- device
def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` outside torchrun)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group (nccl on GPU, gloo on CPU) when ``WORLD_SIZE`` > 1; returns (rank, world)."""
    rank, world, _ = dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's CUDA device (torchrun's local rank) when CUDA is present, else the CPU; otherwise
    the device named (``cpu``, ``cuda``, ``cuda:1``). A CUDA device on a machine without one is a
    :class:`ConfigError` naming the fix, in every stage."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_env()[2] % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


# ------------------------------------------------------------------------------------------- precision
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def uses_bf16(setting: str, device: torch.device, backbone: str | None = None) -> bool:
    """Whether to run under bfloat16 autocast. ``setting``: ``on`` or ``off`` as given (every config's ``bf16``
    field); ``auto``: on CUDA; on a CPU with native bf16 unless a ``backbone`` is given and is EfficientNet-Lite,
    whose depthwise convolutions trained no faster in bf16 on such a CPU and went to nan (bench/RESULTS.md, issue
    19; the CAM stage passes no backbone: its bf16 CAMs measured faster); off on other CPUs."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    if device.type == "cuda":
        return True
    if backbone and backbone.startswith("efficientnet_lite"):
        return False
    return cpu_has_bf16()


def resolve_speed(setting: str, device: torch.device, what: str, backbone: str | None = None) -> bool:
    """Whether to use ``channels_last`` / ``bf16`` autocast: ``on``/``off`` as given; ``auto`` picks what
    bench/bench_train.py measured faster: channels_last everywhere, bf16 by :func:`uses_bf16`."""
    if what == "channels_last":
        return setting != "off"
    return uses_bf16(setting, device, backbone)


def bf16_autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------- schedules
def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The poly schedule ``base_lr * (1 - iteration / max_iterations) ** power``."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def budget_poly_lr(base_lr: float, step: int, total_steps: int, *, elapsed: float = 0.0,
                   budget: float | None = None, power: float = 0.9) -> float:
    """The poly schedule over whichever runs out first, the steps or a time budget: progress is
    ``step / total_steps``, or ``elapsed / budget`` seconds where that is larger (clipped to 1, so the rate ends at
    0). ``budget`` None or 0: steps only. Every trainer schedules with this."""
    progress = step / max(1, total_steps)
    if budget:
        progress = max(progress, elapsed / budget)
    return base_lr * max(0.0, 1.0 - min(1.0, progress)) ** power


# ------------------------------------------------------------------------------------ RNG, checkpoints
def rng_state() -> dict:
    """The torch, NumPy, Python (and CUDA) RNG states as tensors and plain values (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
             "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a wsss training checkpoint (a train stage folder or its ``checkpoint.pt``) through
    :func:`wsss.io.load_checkpoint` (``weights_only=True``: tensors and plain containers only)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise StageError(f"{path}: checkpoint not found; point --checkpoint at a train stage folder or its "
                         f"{CHECKPOINT}")
    state = _load_torch(path, map_location=map_location)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise UnsafeFileError(f"{path}: not a wsss checkpoint (no model/meta); use one written by 'wsss train'")
    return state
