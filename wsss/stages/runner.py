"""The per-image stage runner shared by every stage that maps images to masks.

What it guarantees (DESIGN.md, stage-folder contract):

* outputs are written atomically, scores first and the mask last, so an existing mask means a finished image;
* re-running skips finished images when ``stage.json`` holds the same config hash; another hash is refused with a
  clear message unless ``overwrite`` is set, which clears the folder first (``stage.json`` goes first, so a kill
  during the clearing leaves a folder that is refused, never mixed); a non-empty folder without ``stage.json`` is
  refused too; stale hidden temporary files of a killed run are deleted on resume;
* a bad image is recorded (manifest + ``stage.json``) and the run goes on; the caller exits non-zero; a full disk
  (:class:`~wsss.errors.DiskFullError`) or an unwritable folder (:class:`~wsss.errors.UnwritableError`) is not one
  image's fault and stops the stage (finished outputs are kept);
* memory is flat in the number of images: one image is in memory at a time and each finished image leaves only a
  small record (ids, paths, status); confusion matrices are summed as they arrive;
* ``workers > 1`` uses a process pool; under ``torchrun`` (``WORLD_SIZE`` > 1) images are sharded by ``RANK`` and
  rank 0 merges the shards into one manifest;
* when the dataset has GT, a quality table (mIoU, labelled mIoU, coverage, precision/recall) goes into stage.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..config import config_hash, config_to_dict, hashed_dict
from ..conventions import IGNORE, palette_for
from ..datasets import Dataset, Sample
from ..errors import DiskFullError, ImageError, StageError, UnwritableError, WsssError
from ..folders import StageFolder
from ..io import (
    make_dirs,
    read_json,
    read_mask,
    remove_stale_temp_files,
    write_csv,
    write_jpeg,
    write_json,
    write_mask,
    write_png,
    write_scores,
)
from ..metrics import confusion_matrix, scores_from_confusion
from ..progress import progress

log = logging.getLogger(__name__)

MANIFEST_HEADER = ["image_id", "mask", "scores", "status", "error", "seconds"]


_LOADED: dict = {}  # the one network a worker process holds (see load_once)


def load_once(path: str | Path, load: Callable[[], Any], *options) -> Any:
    """``load()``'s result, kept for the process: a per-image job's network is loaded once per worker and again
    only when the file (its path or mtime) or ``options`` (device, memory format ...) change. One slot: a stage
    holds one network, and the next stage's replaces it. A missing file is left to ``load`` to report."""
    key = (str(path), os.path.getmtime(path) if os.path.exists(path) else None, *options)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load()
    return _LOADED[key]


@dataclass
class ImageResult:
    """What a job returns for one image: the mask, optional (K, H, W) scores with class ids, optional extra
    uint8 images written as ``<folder>/<id>.png`` (e.g. ``{"saliency": map}``)."""

    mask: np.ndarray
    scores: np.ndarray | None = None
    class_ids: Any = None
    pngs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StageSummary:
    stage_dir: Path
    total: int
    done: int
    skipped: int
    failed: list[tuple[str, str]]
    quality: dict | None
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment variables (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def prepare_stage_dir(stage_dir: Path, *, stage: str, method: str, config, dataset: Dataset,
                      upstream: dict[str, StageFolder] | None = None, overwrite: bool = False) -> str:
    """Check or start ``stage.json``; returns the config hash. Refuses a folder made with another config."""
    stage_dir = Path(stage_dir)
    upstream = upstream or {}
    inputs = {"dataset": dataset.describe(), "upstream": {k: str(v.path) for k, v in upstream.items()}}
    # identity of the inputs, not their size: adding images to a split resumes instead of refusing
    identity = {"dataset": [str(Path(dataset.root).resolve()), dataset.layout, dataset.split],
                "upstream": {k: str(Path(v.path).resolve()) for k, v in upstream.items()}}
    digest = config_hash(stage, method, hashed_dict(config), identity)  # the torch device etc. left out
    rank, world = dist_info()
    info_path = stage_dir / "stage.json"
    if rank != 0:  # wait for rank 0 to have prepared the folder (with --overwrite: its fresh stage.json)
        deadline = time.time() + 600
        while time.time() < deadline:
            with contextlib.suppress(OSError, ValueError):
                info = read_json(info_path)
                if info.get("config_hash") == digest and (not overwrite or info.get("status") == "running"):
                    return digest
            time.sleep(0.2)
        raise StageError(f"{info_path}: rank 0 did not prepare the stage folder within 10 minutes")
    if info_path.exists():
        try:
            old = read_json(info_path)
        except ValueError:
            old = {}
        if old.get("config_hash") != digest and not overwrite:
            raise StageError(
                f"{stage_dir}: this stage folder was made with another config or input "
                f"(hash {old.get('config_hash')} vs {digest}); pass --overwrite to redo it, or use another --run"
            )
        if overwrite:  # redo from scratch, whether the config changed or not
            log.warning("overwriting %s", stage_dir)
            _clear_stage_dir(stage_dir)
    elif stage_dir.exists() and any(p for p in stage_dir.iterdir() if not p.name.startswith(".")):
        if not overwrite:
            raise StageError(
                f"{stage_dir}: the folder holds files but no stage.json (not a wsss stage folder, or an interrupted "
                "--overwrite); pass --overwrite to clear it, or use another --run"
            )
        _clear_stage_dir(stage_dir)
    elif overwrite and stage_dir.exists():
        _clear_stage_dir(stage_dir)
    make_dirs(stage_dir)  # no permission / read-only mount: UnwritableError naming the folder, before any work
    if world == 1:  # no other process writes here: drop what a killed run left half-written
        removed = remove_stale_temp_files(stage_dir)
        if removed:
            log.info("removed %d temporary file(s) of an interrupted run in %s", removed, stage_dir)
    if not info_path.exists():
        write_json(info_path, {
            "stage": stage, "method": method, "wsss_version": __version__, "status": "running",
            "config_hash": digest, "config": config_to_dict(config), "inputs": inputs,
        })
    return digest


def _clear_stage_dir(stage_dir: Path) -> None:
    """Delete a stage folder, ``stage.json`` first: a kill midway leaves a folder without it, which is refused."""
    (stage_dir / "stage.json").unlink(missing_ok=True)
    shutil.rmtree(stage_dir)


# --------------------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_worker(ctx: dict) -> None:
    _WORKER.clear()
    _WORKER.update(ctx)
    if ctx.get("torch_threads"):
        try:
            import torch

            torch.set_num_threads(ctx["torch_threads"])
        except ImportError:  # pragma: no cover - torch is a dependency
            pass


def _process_one(image_id: str) -> dict:
    ctx = _WORKER
    stage_dir: Path = ctx["stage_dir"]
    dataset: Dataset = ctx["dataset"]
    t0 = time.perf_counter()
    record = {"image_id": image_id, "mask": f"masks/{image_id}.png", "scores": "", "status": "ok", "error": "",
              "seconds": 0.0, "cm": None}
    mask_path = stage_dir / record["mask"]
    try:
        if mask_path.exists() and not ctx["force"]:  # finished in an earlier run: only re-evaluate
            record["status"] = "ok"
            if ctx["scores"]:
                record["scores"] = f"scores/{image_id}.npz"
            if ctx["evaluate"]:
                gt = dataset.load_gt(image_id)
                if gt is not None:
                    mask = read_mask(mask_path)
                    if mask.shape != gt.shape:
                        raise ImageError(f"{dataset.gt_path(image_id)}: GT size {gt.shape} differs from the mask "
                                         f"{mask_path} {mask.shape}")
                    record["cm"] = confusion_matrix(gt, mask, dataset.num_classes)
            record["resumed"] = True
            return record
        sample: Sample = dataset.load(image_id, image=ctx["job"].needs_image, gt=True)
        result: ImageResult = ctx["job"](sample, ctx["upstream"])
        mask = np.asarray(result.mask)
        shape = sample.image.shape[:2] if sample.image is not None else (sample.gt.shape if sample.gt is not None
                                                                          else mask.shape)
        if mask.dtype != np.uint8 or mask.shape != tuple(shape):
            raise WsssError(f"internal: job returned a {mask.dtype} mask of {mask.shape} for a {shape} image")
        bad = (mask >= dataset.num_classes) & (mask != IGNORE)
        if bad.any():
            raise WsssError(f"internal: job returned labels {np.unique(mask[bad])[:5].tolist()} outside the classes")
        if result.scores is not None:
            record["scores"] = f"scores/{image_id}.npz"
            write_scores(stage_dir / record["scores"], result.scores, result.class_ids)
        for folder, array in result.pngs.items():
            write_png(stage_dir / folder / f"{image_id}.png", array)
        if image_id in ctx["overlay_ids"] and sample.image is not None:
            from ..report import overlay

            write_jpeg(stage_dir / "overlays" / f"{image_id}.jpg", overlay(sample.image, mask, ctx["palette"]))
        write_mask(mask_path, mask, ctx["palette"])  # last: its presence marks the image finished
        if ctx["evaluate"] and sample.gt is not None:
            record["cm"] = confusion_matrix(sample.gt, mask, dataset.num_classes)
    except (DiskFullError, UnwritableError):
        raise  # not this image's fault: stop the stage, keep what is finished
    except WsssError as exc:
        record.update(status="failed", error=str(exc), mask="", scores="")
    except Exception as exc:  # noqa: BLE001 - one image's bug must not lose the others' work
        log.debug("image %s failed:\n%s", image_id, traceback.format_exc())
        record.update(status="failed", error=f"internal error {type(exc).__name__}: {exc}", mask="", scores="")
    record["seconds"] = round(time.perf_counter() - t0, 4)
    return record


# ------------------------------------------------------------------------------------------------ runner
def _pool_context(job):
    """``forkserver`` for jobs that run torch in the worker (``job.uses_torch``) once torch is loaded here: a child
    forked from a process whose torch/OpenMP thread pools have run can deadlock on a lock held by a thread that does
    not exist in the child. Other jobs keep ``fork`` (fast start, no re-import)."""
    import multiprocessing
    import sys

    if getattr(job, "uses_torch", False) and "torch" in sys.modules and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def run_images(stage_dir: Path, *, dataset: Dataset, job: Callable[[Sample, dict], ImageResult],
               upstream: dict[str, StageFolder] | None = None, workers: int = 1, writes_scores: bool = False,
               overlays: int = 0, torch_threads: int | None = None, extra_info: dict | None = None,
               desc: str | None = None) -> StageSummary:
    """Run ``job`` over every image of ``dataset`` into ``stage_dir`` (prepared by :func:`prepare_stage_dir`).

    ``job(sample, upstream)`` must be picklable for ``workers > 1`` and carry ``needs_image`` (bool).
    """
    stage_dir = Path(stage_dir)
    rank, world = dist_info()
    ids = dataset.ids[rank::world] if world > 1 else list(dataset.ids)
    ctx = {
        "stage_dir": stage_dir, "dataset": dataset, "job": job, "upstream": upstream or {},
        "scores": writes_scores, "evaluate": True, "force": False,
        "overlay_ids": set(dataset.ids[:overlays]),
        # each pool worker of a torch job gets its share of the cores unless the method caps it lower
        "torch_threads": torch_threads or (max(1, (os.cpu_count() or 1) // workers)
                                           if workers > 1 and getattr(job, "uses_torch", False) else None),
        "palette": palette_for(256, dataset.palette_name),
    }
    t0 = time.perf_counter()
    records: list[dict] = []
    cm_sum = _CmSum()
    bar = dict(total=len(ids), desc=desc or stage_dir.name, unit="img")
    if workers <= 1 or len(ids) <= 1:
        _init_worker({**ctx, "torch_threads": None})  # the cap is for pool workers, never for this process
        for image_id in progress(ids, **bar):
            records.append(cm_sum.take(_process_one(image_id)))
    else:
        try:
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(ctx,),
                                     mp_context=_pool_context(job)) as pool:
                chunk = max(1, min(16, len(ids) // (workers * 8)))
                try:
                    for record in progress(pool.map(_process_one, ids, chunksize=chunk), **bar):
                        records.append(cm_sum.take(record))
                except BaseException:  # full disk, Ctrl-C: stop now instead of running the queued images
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        except BrokenProcessPool as exc:
            raise StageError(
                f"{stage_dir}: a worker process died ({exc}; killed, or out of memory?); finished images are kept: "
                "re-run the same command, with fewer --workers if memory is short"
            ) from None
    seconds = time.perf_counter() - t0
    if world > 1:
        return _merge_ranks(stage_dir, dataset, records, cm_sum, seconds, rank, world, extra_info)
    return _finish(stage_dir, dataset, records, cm_sum, seconds, extra_info)


class _CmSum:
    """Running sum of the per-image confusion matrices (records keep only a flag, so memory stays flat)."""

    def __init__(self):
        self.total: np.ndarray | None = None
        self.images = 0

    def take(self, record: dict) -> dict:
        cm = record.pop("cm", None)
        record["scored"] = cm is not None
        if cm is not None:
            self.add(np.asarray(cm, np.int64), 1)
        return record

    def add(self, cm: np.ndarray, images: int) -> None:
        self.total = cm.copy() if self.total is None else self.total + cm
        self.images += images


def _merge_ranks(stage_dir, dataset, records, cm_sum, seconds, rank, world, extra_info) -> StageSummary:
    parts = stage_dir / ".parts"
    write_json(parts / f"rank{rank}.json", {
        "seconds": seconds, "records": records, "cm_images": cm_sum.images,
        "cm": None if cm_sum.total is None else cm_sum.total.tolist()})
    if rank != 0:
        failed = [(r["image_id"], r["error"]) for r in records if r["status"] != "ok"]
        return StageSummary(stage_dir, len(records), 0, 0, failed, None, seconds)
    deadline = time.time() + 24 * 3600
    while not all((parts / f"rank{r}.json").exists() for r in range(world)):
        if time.time() > deadline:
            raise StageError(f"{parts}: not every rank finished")
        time.sleep(0.5)
    merged, slowest, total = [], seconds, _CmSum()
    for r in range(world):
        part = read_json(parts / f"rank{r}.json")
        slowest = max(slowest, part["seconds"])
        merged += part["records"]
        if part.get("cm") is not None:
            total.add(np.asarray(part["cm"], np.int64), part["cm_images"])
    shutil.rmtree(parts, ignore_errors=True)
    order = {i: k for k, i in enumerate(dataset.ids)}
    merged.sort(key=lambda rec: order.get(rec["image_id"], 0))
    return _finish(stage_dir, dataset, merged, total, slowest, {**(extra_info or {}), "world_size": world})


def _finish(stage_dir: Path, dataset: Dataset, records: list[dict], cm_sum: _CmSum, seconds: float,
            extra_info: dict | None) -> StageSummary:
    problems = [{"image_id": i, "mask": "", "scores": "", "status": "failed", "error": why, "seconds": 0.0}
                for i, why in dataset.problems]
    all_records = records + problems
    write_csv(stage_dir / "manifest.csv", MANIFEST_HEADER,
              [[r[k] for k in MANIFEST_HEADER] for r in all_records])
    quality = None
    if cm_sum.total is not None:
        quality = scores_from_confusion(cm_sum.total, dataset.classes)
        quality["images"] = cm_sum.images
    failed = [(r["image_id"], r["error"]) for r in all_records if r["status"] != "ok"]
    skipped = sum(1 for r in records if r.get("resumed"))
    done = sum(1 for r in records if r["status"] == "ok") - skipped
    info_path = stage_dir / "stage.json"
    info = read_json(info_path) if info_path.exists() else {}
    processed = [r["seconds"] for r in records if r["status"] == "ok" and not r.get("resumed")]
    info.update({
        "status": "complete" if not failed else "complete_with_failures",
        "counts": {"images": len(all_records), "ok": done + skipped, "written": done, "resumed": skipped,
                   "failed": len(failed)},
        "timings": {"seconds": round(seconds, 3),
                    "images_per_second": round(done / seconds, 3) if seconds > 0 and done else None,
                    "mean_seconds_per_image": round(float(np.mean(processed)), 4) if processed else None},
        "failures": [{"image_id": i, "reason": why} for i, why in failed],
        "quality": quality,
        **(extra_info or {}),
    })
    write_json(info_path, info)
    if failed:
        log.warning("%d of %d images failed in %s; see manifest.csv", len(failed), len(all_records), stage_dir)
    return StageSummary(stage_dir, len(all_records), done, skipped, failed, quality, seconds)


# --------------------------------------------------------------------------------------- method stages
@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: the method's config class and a factory making its per-image job.

    ``make_job(config, stage_dir=..., dataset=..., upstream=..., workers=...)`` may do a training step first (CAM,
    saliency) and must be resumable from what it leaves in ``stage_dir``. ``upstream`` names the upstream stage
    folders the method reads (e.g. ``("seeds",)``), ``optional_upstream`` those it may read (a recipe maps them
    under ``inputs``; the CLI gives them as options), ``torch_threads`` caps torch's threads in pool workers.
    ``finish(config, stage_dir=..., dataset=...)`` returns more ``stage.json`` entries computed from the finished
    folder (e.g. the saliency maps' foreground quality).
    """

    config_cls: type
    make_job: Callable[..., Callable[[Sample, dict], ImageResult]]
    summary: str
    writes_scores: bool = False
    upstream: tuple[str, ...] = ()
    optional_upstream: tuple[str, ...] = ()
    torch_threads: int | None = None
    finish: Callable[..., dict] | None = None


def run_method_stage(stage: str, method: str, spec: MethodSpec, config, dataset: Dataset, run_dir: Path, *,
                     upstream: dict[str, StageFolder] | None = None, workers: int = 1, overwrite: bool = False,
                     overlays: int = 0) -> StageSummary:
    """Prepare ``run_dir/<stage>/<method>/``, build the method's job (training if it must) and run it."""
    stage_dir = Path(run_dir) / stage / method
    prepare_stage_dir(stage_dir, stage=stage, method=method, config=config, dataset=dataset, upstream=upstream,
                      overwrite=overwrite)
    job = spec.make_job(config, stage_dir=stage_dir, dataset=dataset, upstream=upstream or {}, workers=workers)
    summary = run_images(stage_dir, dataset=dataset, job=job, upstream=upstream, workers=workers,
                         writes_scores=spec.writes_scores, overlays=overlays, torch_threads=spec.torch_threads,
                         desc=f"{stage}/{method}")
    if spec.finish is not None and dist_info()[0] == 0:
        info = read_json(stage_dir / "stage.json")
        info.update(spec.finish(config, stage_dir=stage_dir, dataset=dataset))
        write_json(stage_dir / "stage.json", info)
    return summary
