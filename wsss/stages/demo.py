"""``wsss demo``: the generated dataset through every stage that exists, into one run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..datasets import make_demo_data, open_dataset
from ..errors import StageError
from .runner import run_method_stage
from .seeds import SEED_METHODS


def run_demo(run_dir: Path, *, images: int = 60, workers: int = 2, overwrite: bool = False,
             echo: Callable[[str], None] = print) -> list[tuple[str, dict | None]]:
    """Make (or reuse) ``run_dir/data`` and run the stages; returns ``[(stage name, quality dict)]``."""
    from ..config import ThresholdConfig

    data = run_dir / "data"
    if not (data / "ImageSets" / "Segmentation" / "trainval.txt").exists():
        echo(f"generating {images} demo images in {data}")
        make_demo_data(data, images)
    dataset = open_dataset(data, "trainval")
    rows = []
    summary = run_method_stage("seeds", "threshold", SEED_METHODS["threshold"], ThresholdConfig(), dataset,
                               run_dir, workers=workers, overwrite=overwrite, overlays=8)
    if summary.failed:
        raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
    rows.append(("seeds/threshold", summary.quality))
    rows += _demo_cam(dataset, run_dir, workers=workers, overwrite=overwrite, echo=echo)
    from ..config import BoxConfig, CRFConfig, GrabCutConfig
    from .refine import REFINERS

    for method, config in (("box", BoxConfig()), ("grabcut", GrabCutConfig())):
        summary = run_method_stage("seeds", method, SEED_METHODS[method], config, dataset, run_dir,
                                   workers=workers, overwrite=overwrite, overlays=8)
        if summary.failed:
            raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
        rows.append((f"seeds/{method}", summary.quality))
    from .folder import StageFolder

    summary = run_method_stage("refined", "crf", REFINERS["crf"], CRFConfig(), dataset, run_dir,
                               upstream={"input": StageFolder.open(run_dir / "seeds" / "grabcut")},
                               workers=workers, overwrite=overwrite, overlays=8)
    if summary.failed:
        raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
    rows.append(("refined/crf (grabcut)", summary.quality))
    rows += _demo_saliency_guide(dataset, run_dir, workers=workers, overwrite=overwrite, echo=echo)
    rows += _demo_train(data, run_dir, workers=workers, overwrite=overwrite, echo=echo)
    return rows


def _demo_train(data: Path, run_dir: Path, *, workers: int, overwrite: bool,
                echo: Callable[[str], None]) -> list[tuple[str, dict | None]]:
    """A tiny DeepLab-v2 (ResNet-18, crop 96, 40 iterations) on the refined pseudo masks of the train split,
    validated and predicted on val (about 35 CPU seconds of training: a minute or two on an idle 2-core machine)."""
    from ..config import PredictConfig, TrainConfig
    from .predict import run_predict
    from .train import run_train

    train_split, val_split = open_dataset(data, "train"), open_dataset(data, "val")
    config = TrainConfig(backbone="resnet18", iterations=40, batch_size=4, crop_size=96, lr=1e-3,
                         checkpoint_every=20, loader_workers=0)
    echo("train/deeplabv2: 40 iterations on refined/crf (resnet18, crop 96)")
    trained = run_train("deeplabv2", config, train_split, run_dir, labels=str(run_dir / "refined" / "crf"),
                        val_dataset=val_split, overwrite=overwrite)
    summary = run_predict(trained.checkpoint, PredictConfig(), val_split, run_dir, workers=workers,
                          overwrite=overwrite, overlays=8)
    if summary.failed:
        raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
    return [("predictions/deeplabv2 (val)", summary.quality)]


def _demo_saliency_guide(dataset, run_dir: Path, *, workers: int, overwrite: bool,
                         echo: Callable[[str], None]) -> list[tuple[str, dict | None]]:
    """Saliency seeds (a small net, about a minute on 2 cores) and the guide labeller on the demo set.

    Class evidence comes from the CAM seeds when the demo made them (RUN/seeds/cam), else from the threshold seeds'
    masks (nearest seed). Also writes the baselines made from the same inputs: saliency-only and, with CAMs, the
    dense CAM labels.
    """
    from ..config import CamGuideConfig, SaliencyConfig, SaliencyGuideConfig, SaliencyOnlyConfig
    from .label import run_label_stage

    config = SaliencyConfig(input_size=96, epochs=12, batch_size=8, max_minutes=3.0)
    echo("seeds/saliency: training a ResNet-18 U-Net on GrabCut-from-box targets (96 px, <= 3 minutes)")
    summary = run_method_stage("seeds", "saliency", SEED_METHODS["saliency"], config, dataset, run_dir,
                               workers=workers, overwrite=overwrite, overlays=8)
    if summary.failed:
        raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
    rows = [("seeds/saliency", summary.quality)]
    cam = run_dir / "seeds" / "cam"
    seeds = cam if (cam / "manifest.csv").exists() else run_dir / "seeds" / "threshold"
    guides = [("saliency", SaliencyGuideConfig()), ("saliency-only", SaliencyOnlyConfig())]
    if seeds == cam:
        guides.append(("cam", CamGuideConfig()))
    for guide, guide_config in guides:
        summary = run_label_stage(guide, guide_config, dataset, run_dir,
                                  upstream_paths={"seeds": str(seeds), "saliency": str(run_dir / "seeds" / "saliency")},
                                  workers=workers, overwrite=overwrite, overlays=8)
        if summary.failed:
            raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
        rows.append((f"labels/{guide} ({seeds.name} seeds)", summary.quality))
    return rows


def demo_cam_config():
    """The demo's CAM settings: the config of the ``cam`` step of the shipped demo recipe (pipelines/demo.yaml),
    which ``wsss demo`` runs (a ResNet-18 classifier, 30 epochs of 96 px crops, capped at 3 minutes; the tests check
    its quality bar). ``bg_threshold`` 0.55 is the best of ``wsss eval --sweep`` on the generated 60-image set
    (bench/RESULTS.md, issue 4).
    """
    from ..recipes import load_recipe, resolve_recipe

    return next(step.config for step in resolve_recipe(load_recipe("demo")) if step.name == "cam")


def _demo_cam(dataset, run_dir: Path, *, workers: int, overwrite: bool,
              echo: Callable[[str], None]) -> list[tuple[str, dict | None]]:
    """CAM seeds: a ResNet-18 GAP classifier trained on the tags (the demo recipe's cam step: crop 96, 30 epochs,
    at most 3 minutes), then multi-scale CAMs (1.0, 1.5, 2.0 + flip) as a dense label map; under a minute on 2 idle
    cores."""
    config = demo_cam_config()
    echo(f"seeds/cam: training a ResNet-18 GAP classifier on the tags (crop {config.crop_size}, {config.epochs} "
         f"epochs, <= {config.max_minutes:g} minutes)")
    summary = run_method_stage("seeds", "cam", SEED_METHODS["cam"], config, dataset, run_dir, workers=1,
                               overwrite=overwrite, overlays=8)
    if summary.failed:
        raise StageError(f"{summary.stage_dir}: {len(summary.failed)} demo images failed: {summary.failed[:3]}")
    return [("seeds/cam", summary.quality)]
