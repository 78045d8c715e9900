"""``wsss run RECIPE``: run a recipe's steps in order into one run folder.

Each step is an ordinary stage (the same runner as its CLI command), so a re-run skips what is finished: every
image of a finished stage is *resumed* (its mask is kept and only re-scored), an interrupted stage goes on from its
last written image, and a stage whose config changed is refused (``--overwrite`` redoes every stage). The run
folder gets ``run.json`` (the resolved recipe, the dataset, per-step status, timings and quality), which
``wsss report`` reads for the step order.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..config import config_to_dict
from ..datasets import Dataset, open_dataset
from ..errors import ConfigError, StageError
from ..io import read_json, write_json
from ..recipes import Recipe, ResolvedStep, resolve_recipe
from ..folders import StageFolder

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    name: str
    folder: str
    stage_dir: Path
    done: int
    resumed: int
    failed: list
    quality: dict | None
    seconds: float
    split: str | None = None
    inputs: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``folder`` with its one input step and a split other than the run's, e.g. ``refined/crf (grabcut)``."""
        notes = (list(self.inputs) if len(self.inputs) == 1 and not self.folder.startswith(("train/", "predictions/"))
                 else []) + ([self.split] if self.split else [])
        return self.folder + (f" ({', '.join(notes)})" if notes else "")

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        return "resumed" if self.done == 0 and self.resumed else "ran"


def _run_step(rs: ResolvedStep, dataset: Dataset, run_dir: Path, upstream: dict[str, Path], *, workers: int,
              overwrite: bool, overlays: int, open_split: Callable[[str | None], Dataset]):
    """Run one resolved step with its stage's own runner (the one its CLI command calls).

    Returns ``(stage_dir, written, resumed, failed, quality)``; for a train step ``written`` / ``resumed`` count
    iterations trained in this call / before it.
    """
    from ..recipes import STAGES
    from .runner import run_method_stage

    stage, method = rs.step.stage, rs.step.method
    if stage == "train":
        from .train import run_train

        val = open_split(rs.step.val_split) if rs.step.val_split else None
        labels = str(upstream["labels"]) if "labels" in upstream else "gt"
        summary = run_train(method, rs.config, dataset, run_dir, labels=labels, val_dataset=val, overwrite=overwrite)
        trained = summary.iterations - summary.start_iteration
        return summary.stage_dir, trained, summary.start_iteration, list(summary.failed), summary.validation
    if stage == "predict":
        from .predict import run_predict

        summary = run_predict(upstream["checkpoint"], rs.config, dataset, run_dir, workers=workers,
                              overwrite=overwrite, overlays=overlays)
    elif stage == "label":
        from .label import run_label_stage

        summary = run_label_stage(method, rs.config, dataset, run_dir,
                                  upstream_paths={k: str(v) for k, v in upstream.items()}, workers=workers,
                                  overwrite=overwrite, overlays=overlays)
    else:  # seeds, refine: the registry's MethodSpec through the shared runner (what run_refine does too)
        folders = {role: StageFolder.open(path) for role, path in upstream.items()}
        summary = run_method_stage(STAGES[stage].folder, method, rs.spec, rs.config, dataset, run_dir,
                                   upstream=folders, workers=workers, overwrite=overwrite, overlays=overlays)
    return Path(summary.stage_dir), summary.done, summary.skipped, list(summary.failed), summary.quality


def run_recipe(recipe: Recipe, dataset_path: str | Path, run_dir: str | Path | None = None, *, workers: int | None = None,
               overwrite: bool = False, redo: tuple[str, ...] | list[str] = (),
               skip: tuple[str, ...] | list[str] = (), overlays: int = 8,
               echo: Callable[[str], None] = print) -> list[StepResult]:
    """Run every step of ``recipe`` on the dataset at ``dataset_path`` into ``run_dir`` (default ``runs/<name>``).

    ``redo`` names steps to redo from scratch (their downstream steps follow, as their input is rewritten);
    ``skip`` names steps to leave out of this run (a step reading a skipped step is an error).
    Raises :class:`StageError` after the first step with failed images (the later steps would read its holes);
    what finished stays on disk and the next call resumes.
    """
    steps = resolve_recipe(recipe)  # every step checked before anything runs
    for flag, names in (("--redo", redo), ("--skip", skip)):
        unknown = sorted(set(names) - {rs.name for rs in steps})
        if unknown:
            raise ConfigError(f"{flag} {', '.join(unknown)}: no such step; steps: {', '.join(rs.name for rs in steps)}")
    for rs in steps:
        needs = sorted(set(rs.inputs.values()) & set(skip))
        if needs and rs.name not in skip:
            raise ConfigError(f"--skip {', '.join(needs)}: step {rs.name!r} reads it; skip {rs.name!r} too")
    steps = [rs for rs in steps if rs.name not in skip]
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    datasets: dict[str | None, Dataset] = {}

    def dataset_for(split):
        if split not in datasets:
            datasets[split] = open_dataset(dataset_path, split)
        return datasets[split]

    info_path = run_dir / "run.json"
    info = {
        "recipe": recipe.name, "recipe_file": recipe.source, "description": recipe.description,
        "wsss_version": __version__, "dataset": str(dataset_path), "report": recipe.report,
        "steps": [{"name": rs.name, "stage": rs.step.stage, "method": rs.step.method, "folder": rs.folder,
                   "inputs": rs.inputs, "split": rs.step.split or recipe.split,
                   "config": config_to_dict(rs.config), "status": "pending"} for rs in steps],
    }
    if info_path.exists():  # keep the wall time that earlier calls spent making each stage folder
        old = {s["name"]: s for s in read_json(info_path).get("steps", [])}
        for s in info["steps"]:
            if s["name"] in old and old[s["name"]].get("folder") == s["folder"]:
                s["wall_seconds"] = old[s["name"]].get("wall_seconds", 0.0)
    write_json(info_path, info)

    results: list[StepResult] = []
    written: dict[str, int] = {}
    t_run = time.perf_counter()
    for index, rs in enumerate(steps):
        split = rs.step.split or recipe.split
        dataset = dataset_for(split)
        upstream = {role: run_dir / next(s.folder for s in steps if s.name == ref) for role, ref in rs.inputs.items()}
        n_workers = rs.step.workers or workers or recipe.workers or 1  # a step's own setting wins
        changed = [ref for ref in rs.inputs.values() if written.get(ref)]
        stage_dir = run_dir / rs.folder
        echo(f"[{index + 1}/{len(steps)}] {rs.name}: {rs.step.stage} {rs.step.method} -> {run_dir / rs.folder}"
             + (f" (reads {', '.join(f'{k}={v}' for k, v in rs.inputs.items())})" if rs.inputs else ""))
        if (overwrite or changed or rs.name in redo) and stage_dir.exists():
            # the runner keeps finished images of a folder with the same config; an input rewritten in this run
            # (or --overwrite) makes them stale, so the pipeline clears the folder it owns
            echo(f"    redoing {rs.folder}: " + (f"its input {', '.join(changed)} was rewritten in this run"
                                                 if changed else "--redo" if rs.name in redo else "--overwrite"))
            shutil.rmtree(stage_dir)
            info["steps"][index]["wall_seconds"] = 0.0
        t0 = time.perf_counter()
        try:
            stage_dir, done, resumed, failed, quality = _run_step(rs, dataset, run_dir, upstream, workers=n_workers,
                                                                  overwrite=overwrite or rs.name in redo,
                                                                  overlays=overlays, open_split=dataset_for)
        except StageError as exc:
            if "made with another config" not in str(exc):
                raise
            raise StageError(f"step {rs.name!r}: {exc} (with wsss run: --redo {rs.name} redoes this step and the "
                             "steps reading it)") from None
        result = StepResult(rs.name, rs.folder, stage_dir, done, resumed, failed, quality,
                            time.perf_counter() - t0,
                            split=(rs.step.val_split if quality else None) if rs.step.stage == "train"
                            else split if split != recipe.split else None,
                            inputs=tuple(rs.inputs.values()))
        results.append(result)
        written[rs.name] = result.done
        record = info["steps"][index]
        unit = "iterations" if rs.step.stage == "train" else "images"
        if result.done:  # wall time spent making this folder, over every call that wrote into it
            record["wall_seconds"] = round(record.get("wall_seconds", 0.0) + result.seconds, 3)
        record.update({"status": result.status, "unit": unit, "seconds": round(result.seconds, 3), "quality": _brief(quality),
                       "written": result.done, "resumed": result.resumed, "failed": len(result.failed)})
        write_json(info_path, info)
        if unit == "iterations":
            echo(f"    {result.status}: {result.done} iterations trained now, {result.resumed} before, "
                 f"{result.seconds:.1f}s")
        else:
            echo(f"    {result.status}: {result.done} written, {result.resumed} resumed, {len(result.failed)} failed, "
                 f"{result.seconds:.1f}s")
        if result.failed:
            raise StageError(
                f"{stage_dir}: {len(result.failed)} image(s) failed in step {rs.name!r} (listed in its stage.json, "
                f"first: {result.failed[0][0]}: {result.failed[0][1]}); fix them and re-run: finished images are kept"
            )
    info["seconds"] = round(time.perf_counter() - t_run, 3)
    write_json(info_path, info)
    return results


def _brief(quality: dict | None) -> dict | None:
    if not quality:
        return None
    keys = ("miou", "labelled_miou", "coverage", "pixel_accuracy", "mean_precision", "mean_recall", "images")
    return {k: quality.get(k) for k in keys}


def run_demo_recipe(run_dir: Path, *, images: int = 60, workers: int = 2, overwrite: bool = False,
                    echo: Callable[[str], None] = print) -> tuple[list[StepResult], Path]:
    """``wsss demo``: make (or reuse) ``run_dir/data``, run ``pipelines/demo.yaml`` on it, write the report.

    Returns the step results and the report's path.
    """
    from ..datasets import make_demo_data
    from ..recipes import load_recipe
    from ..report import write_report

    run_dir = Path(run_dir)
    data = run_dir / "data"
    if not (data / "ImageSets" / "Segmentation" / "trainval.txt").exists():
        echo(f"generating {images} demo images in {data}")
        make_demo_data(data, images)
    results = run_recipe(load_recipe("demo"), data, run_dir, workers=workers, overwrite=overwrite, echo=echo)
    return results, write_report(run_dir)


def demo_step_config(step_name: str):
    """The resolved config of step ``step_name`` of the shipped demo recipe (pipelines/demo.yaml), which
    ``wsss demo`` runs; the tests of the demo's quality bars read their settings from here."""
    from ..recipes import load_recipe

    for step in resolve_recipe(load_recipe("demo")):
        if step.name == step_name:
            return step.config
    raise ConfigError(f"the demo recipe has no step {step_name!r}")
