"""``wsss predict --checkpoint C``: a trained model's masks (+ class probabilities in ``scores/``) as a stage folder
``RUN/predictions/<model>/``, through the shared per-image runner (workers, resume, torchrun sharding, quality)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import PredictConfig
from ..datasets import Dataset, Sample
from ..errors import ConfigError
from ..folders import StageFolder
from .runner import ImageResult, StageSummary, prepare_stage_dir, run_images

_MODEL_CACHE: dict[tuple[str, str], tuple] = {}


def load_trained_model(checkpoint: str | Path, device: str = "cpu"):
    """``(model in eval mode, meta)`` from a ``wsss train`` checkpoint (cached per process)."""
    import torch

    from ..models import build_model
    from ..runtime import load_checkpoint

    key = (str(Path(checkpoint).resolve()), str(device))
    if key not in _MODEL_CACHE:
        state = load_checkpoint(checkpoint, map_location="cpu")
        meta = state["meta"]
        model = build_model(meta["model"], num_classes=int(meta["num_classes"]), backbone=meta.get("backbone"),
                            **dict(meta.get("model_kwargs", {})))
        model.load_state_dict(state["model"])
        model.eval().to(torch.device(device))
        if meta.get("speed", {}).get("channels_last"):
            model.to(memory_format=torch.channels_last)
        _MODEL_CACHE[key] = (model, {**meta, "iteration": int(state["iteration"])})
    return _MODEL_CACHE[key]


def checkpoint_probs(checkpoint: str | Path, image: np.ndarray, *, scales=(1.0,), flip: bool = False,
                     device: str = "cpu", bf16: bool = False) -> np.ndarray:
    """Class probabilities (K, H, W) of ``image`` by the network of a ``wsss train`` checkpoint (loaded once per
    process), in the memory format it was trained with: what predict, self-training and BoxSup's re-selection
    all compute."""
    from ..models.inference import segment

    model, meta = load_trained_model(checkpoint, device)
    return segment(model, image, scales=scales, flip=flip, device=device,
                   channels_last=bool(meta.get("speed", {}).get("channels_last")), bf16=bf16)


@dataclass
class PredictJob:
    checkpoint: str
    config: PredictConfig
    device: str
    bf16: bool
    needs_image = True
    uses_torch = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        probs = checkpoint_probs(self.checkpoint, sample.image, scales=self.config.scales, flip=self.config.flip,
                                 device=self.device, bf16=self.bf16)
        mask = probs.argmax(0).astype(np.uint8)
        if self.config.crf:
            from ..crf import crf_refine

            present = np.unique(np.concatenate([[0], np.unique(mask)])).astype(np.int64)
            mask = crf_refine(sample.image, scores=probs[present], class_ids=present, box_prior=False,
                              preset=self.config.crf_preset)
        scores = probs if self.config.write_scores else None
        return ImageResult(mask, scores=scores, class_ids=np.arange(probs.shape[0]))


def run_predict(checkpoint: str | Path, config: PredictConfig, dataset: Dataset, run_dir: Path, *,
                device: str = "auto", workers: int = 1, overwrite: bool = False, overlays: int = 0) -> StageSummary:
    """Predict every image of ``dataset`` with the model of ``checkpoint`` into ``run_dir/predictions/<model>/``."""
    from ..runtime import CHECKPOINT, load_checkpoint, pick_device, resolve_speed

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / CHECKPOINT
    if not config.scales or any(s <= 0 for s in config.scales):
        raise ConfigError(f"--scales {','.join(map(str, config.scales))}: give positive scales, e.g. 0.5,0.75,1.0")
    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    if int(meta["num_classes"]) != dataset.num_classes:
        raise ConfigError(f"{checkpoint}: the model predicts {meta['num_classes']} classes but {dataset.root} has "
                          f"{dataset.num_classes}; predict on the dataset the model was trained for")
    dev = pick_device(device)
    if dev.type == "cuda":
        workers = 1  # one process per GPU: use torchrun for more
    stage_dir = Path(run_dir) / "predictions" / meta["model"]
    # the checkpoint's identity (its training config and iteration) is part of the stage's hash
    marker = f"checkpoint:{meta.get('config_hash', '')}:{int(state['iteration'])}"
    upstream = {marker: StageFolder(checkpoint)}
    prepare_stage_dir(stage_dir, stage="predictions", method=meta["model"], config=config, dataset=dataset,
                      upstream=upstream, overwrite=overwrite)
    job = PredictJob(str(checkpoint), config, str(dev), resolve_speed(config.bf16, dev, "bf16", meta.get("backbone")))
    threads = 1 if workers > 1 else None
    return run_images(stage_dir, dataset=dataset, job=job, upstream={}, workers=workers,
                      writes_scores=config.write_scores, overlays=overlays, torch_threads=threads,
                      extra_info={"checkpoint": str(checkpoint), "trained_iterations": int(state["iteration"]),
                                  "model": meta["model"], "backbone": meta.get("backbone")},
                      desc=f"predictions/{meta['model']}")
