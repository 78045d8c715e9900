"""BoxSup's iterative runner: the ``boxes`` label guide (``wsss label --guide boxes --boxsup-rounds R``).

Folders (each an ordinary stage folder, so every round can be evaluated, inspected and trained on)::

    RUN/candidates/selective/    candidate masks per image (made with default settings when --candidates is not given)
    RUN/labels/boxes_r0/         round 0: for each box the candidate whose box matches it best
    RUN/train/boxsup_r1/         round 1: MODEL trained on boxes_r0 (checkpoint.pt, log.csv, stage.json)
    RUN/labels/boxes_r1/         round 1: candidates re-selected with that network's probabilities
    ...
    RUN/labels/boxes/            the last round's labels (the guide's own folder) + boxsup.json (every round's quality)

With ``--holdout-split`` (training images that have GT), each round's labels are scored on those images; a round
below the best so far is not kept: the next round trains on the best labels so far and RUN/labels/boxes/ holds the
best round's (boxsup.json: ``holdout_miou`` and ``kept`` per round, ``selected_round``).

Resume: a round whose labels folder is complete for the same config is skipped, a finished training is not rerun,
an interrupted one continues from its checkpoint, an interrupted labels folder from its last image.

Bad input, image by image: an image that fails (in the candidates stage, or in a round: unreadable image, broken
annotation, bad GT) is listed in that round's manifest, left out of the next round's training (wsss.pairs) and
listed as a failure of the guide's own folder, so ``wsss label --guide boxes`` exits 1 with a summary while every
other image is labelled. A round with failures is retried (its failed images only) when the command is re-run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import BoxSupConfig, CandidatesConfig
from ..datasets import Dataset, Sample, open_dataset
from ..errors import ConfigError, ImageError, StageError
from ..folders import StageFolder
from ..io import read_json, write_json
from .candidates import CANDIDATE_METHODS, read_candidates, unlabelled_mask
from .evaluate import evaluate_folder
from .runner import (
    ImageResult,
    StageSummary,
    prepare_stage_dir,
    run_images,
    run_method_stage,
)

log = logging.getLogger(__name__)


@dataclass
class BoxSupRoundJob:
    """One image of one round: read its candidates, select per box (round 0: box match; later: BoxSup cost with
    the round's network), paint the labels."""

    candidates_dir: str
    config: BoxSupConfig
    round_index: int
    checkpoint: str | None = None
    device: str = "cpu"
    lam_scale: float = 1.0  # the network gate's factor on --boxsup-lambda (its kappa, clipped at 0)

    @property
    def needs_image(self) -> bool:
        return self.checkpoint is not None

    @property
    def uses_torch(self) -> bool:
        return self.checkpoint is not None

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..label.boxsup import (
            image_rng,
            initial_selection,
            labels_from_selection,
            update_selection,
        )

        _open_cached(self.candidates_dir)._row(sample.id)  # failed in the candidates stage: fail, quoting its reason
        cands = read_candidates(Path(self.candidates_dir) / "candidates" / f"{sample.id}.npz")
        shape = sample.image.shape[:2] if sample.image is not None else (
            sample.gt.shape if sample.gt is not None else cands.shape)
        if tuple(cands.shape) != tuple(shape):
            raise ImageError(f"{self.candidates_dir}: candidates of {sample.id!r} are {cands.shape}, the image "
                             f"{tuple(shape)}; re-run the candidates stage for this dataset")
        mask = unlabelled_mask(sample, shape)
        if mask is not None:
            return ImageResult(mask)
        cfg = self.config
        paint = {"clip_to_box": cfg.clip_to_box, "poor_fit": cfg.poor_fit, "box_rest": cfg.box_rest}
        if self.checkpoint is None:
            selection = initial_selection(cands, sample.boxes, tie_tolerance=cfg.tie_tolerance, min_fit=cfg.min_fit)
            return ImageResult(labels_from_selection(cands, sample.boxes, selection, **paint))
        from .predict import checkpoint_probs

        probs = checkpoint_probs(self.checkpoint, sample.image, scales=self.config.predict_scales, device=self.device)
        first = initial_selection(cands, sample.boxes, tie_tolerance=cfg.tie_tolerance, min_fit=cfg.min_fit)
        selection, _ = update_selection(cands, sample.boxes, probs, lam=cfg.boxsup_lambda * self.lam_scale,
                                        top_k=cfg.top_k,
                                        clip_to_box=cfg.clip_to_box, balanced=cfg.balanced_ce, min_fit=cfg.min_fit,
                                        previous=first, margin=cfg.keep_margin, agnostic=cfg.class_agnostic,
                                        rng=image_rng(cfg.boxsup_seed, self.round_index, sample.id))
        return ImageResult(labels_from_selection(cands, sample.boxes, selection, **paint))


@dataclass
class CopyLabelsJob:
    """The guide's own folder: the last round's masks."""

    labels_dir: str
    needs_image = False

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        return ImageResult(_open_cached(self.labels_dir).mask(sample.id))


_FOLDERS: dict[tuple, StageFolder] = {}


def _open_cached(path: str) -> StageFolder:
    """``StageFolder.open(path)`` once per process and manifest version (keyed by the manifest's mtime)."""
    manifest = Path(path) / "manifest.csv"
    key = (str(path), manifest.stat().st_mtime_ns if manifest.exists() else None)
    if key not in _FOLDERS:
        _FOLDERS.clear()  # only the folder of the running round is needed
        _FOLDERS[key] = StageFolder.open(path)
    return _FOLDERS[key]


@dataclass(frozen=True)
class RoundTrainConfig:
    """What a round's training folder is hashed with (and records): the BoxSup settings it depends on and the
    training config."""

    boxsup: dict
    train: dict


@dataclass(frozen=True)
class RoundLabelsConfig:
    """What a round's labels folder is hashed with (and records): the BoxSup settings it depends on (for a round
    >= 1 all of them, which also fix every network and labels folder before it)."""

    boxsup: dict


# settings that only shape the initial selection / only the re-selection; neither the number of rounds nor the
# device changes what a round makes, so adding a round or moving to a GPU reuses the finished ones
INITIAL_FIELDS = ("tie_tolerance", "clip_to_box", "min_fit", "poor_fit", "box_rest", "candidates")
UPDATE_FIELDS = ("boxsup_lambda", "top_k", "balanced_ce", "keep_margin", "class_agnostic", "network_gate",
                 "gate_images", "predict_scales", "holdout_split")
UNHASHED_FIELDS = ("boxsup_rounds", "device")


def round_settings(config: BoxSupConfig, round_index: int, *, labels: bool) -> dict:
    """The BoxSup settings that round ``round_index``'s labels (``labels=True``) or training depend on: round 0's
    labels only on the initial-selection settings, round 1's training not on the update's (it trains on round 0),
    everything later on all of them. Run-independent, so two runs of the same command record the same config."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in UNHASHED_FIELDS}
    if round_index == 0:
        return {k: settings[k] for k in INITIAL_FIELDS}
    if round_index == 1 and not labels:
        return {k: v for k, v in settings.items() if k not in UPDATE_FIELDS}
    return settings


def network_agreement(checkpoint: Path, dataset: Dataset, labels: StageFolder, *, images: int,
                      scales: tuple[float, ...], device: str) -> dict:
    """The round network's Cohen's kappa (:func:`wsss.label.boxsup.agreement_kappa`) and pixel accuracy against
    the labels it was trained on, over ``images`` training images spread evenly over the split."""
    import numpy as np

    from ..label.boxsup import agreement_kappa
    from ..metrics import confusion_matrix
    from .predict import checkpoint_probs

    ids = [i for i in dataset.ids if labels.has(i)]
    ids = ids[::max(1, len(ids) // max(1, images))][:images]
    k = dataset.num_classes
    cm = np.zeros((k, k + 1), np.int64)
    for image_id in ids:
        sample = dataset.load(image_id)
        probs = checkpoint_probs(checkpoint, sample.image, scales=scales, device=device)
        cm += confusion_matrix(labels.mask(image_id), probs.argmax(0).astype(np.uint8), k)
    total = cm[:, :k].sum()
    return {"kappa": round(agreement_kappa(cm), 4), "images": len(ids),
            "pixel_accuracy": round(100 * float(np.trace(cm[:, :k]) / total), 2) if total else None}


def _prepare_owned(stage_dir: Path, *, stage: str, method: str, config, dataset: Dataset, upstream: dict,
                   overwrite: bool) -> str:
    """``prepare_stage_dir`` for the folders the boxes guide owns (rounds and their trainings): one made with
    another config is stale (the guide itself is refused or overwritten first), so it is redone with a warning."""
    if isinstance(config, tuple):  # a round's training: (BoxSup settings it depends on, training config)
        config = RoundTrainConfig(config[0], dataclasses.asdict(config[1]))
    try:
        return prepare_stage_dir(stage_dir, stage=stage, method=method, config=config, dataset=dataset,
                                 upstream=upstream, overwrite=overwrite)
    except StageError as exc:
        log.warning("%s; the boxes guide redoes it", exc)
        return prepare_stage_dir(stage_dir, stage=stage, method=method, config=config, dataset=dataset,
                                 upstream=upstream, overwrite=True)


def _check(config: BoxSupConfig) -> None:
    from ..models import MODELS

    if config.model not in MODELS:
        raise ConfigError(f"--model {config.model!r}: choose one of {', '.join(sorted(MODELS))}")
    if config.boxsup_rounds < 0 or config.top_k < 1 or config.boxsup_lambda < 0 or not 0 <= config.tie_tolerance <= 1:
        raise ConfigError("--boxsup-rounds >= 0, --top-k >= 1, --boxsup-lambda >= 0 and 0 <= --tie-tolerance <= 1 "
                          "please")
    if not 0 <= config.min_fit <= 1 or config.keep_margin < 0 or config.gate_images < 1:
        raise ConfigError("0 <= --min-fit <= 1, --keep-margin >= 0 and --gate-images >= 1 please")
    if not config.predict_scales or any(v <= 0 for v in config.predict_scales):
        raise ConfigError("--predict-scales: give positive scales, e.g. 1.0 or 0.5,1.0")
    if config.train.iterations < 1 or config.train.batch_size < 1 or config.train.crop_size < 8:
        raise ConfigError("--iterations and --batch-size must be >= 1 and --crop-size >= 8")


def _complete(stage_dir: Path, digest: str) -> bool:
    info_path = stage_dir / "stage.json"
    if not info_path.exists() or not (stage_dir / "manifest.csv").exists():
        return False
    info = read_json(info_path)
    return info.get("config_hash") == digest and info.get("status") == "complete"


def ensure_candidates(config: BoxSupConfig, dataset: Dataset, run_dir: Path, *, workers: int) -> StageFolder:
    """The candidates stage folder: ``--candidates`` as given, else ``RUN/candidates/selective`` (made or resumed
    with default settings). Every image of the split must have candidates."""
    if config.candidates:
        folder = StageFolder.open(config.candidates)
    else:
        from ..config import build_config

        # an existing RUN/candidates/selective keeps the settings it was made with (it is resumed, not refused)
        info_path = run_dir / "candidates" / "selective" / "stage.json"
        made_with = read_json(info_path).get("config") if info_path.exists() else None
        cand_config = build_config(CandidatesConfig, made_with or {}, where=str(info_path))
        try:
            summary = run_method_stage("candidates", "selective", CANDIDATE_METHODS["selective"], cand_config,
                                       dataset, run_dir, workers=workers)
        except StageError as exc:
            raise StageError(
                f"{exc}. The boxes guide uses RUN/candidates/selective for its candidates: for another dataset or "
                "split give --candidates FOLDER (from 'wsss candidates --split SPLIT --run OTHER_RUN'), or use "
                "another --run") from None
        folder = StageFolder.open(summary.stage_dir)
    missing = [i for i in dataset.ids if i not in folder.rows]  # never made: another split or dataset
    if missing:
        raise StageError(f"{folder.path}: no candidates for {len(missing)} image(s) of split {dataset.split!r} "
                         f"(e.g. {missing[0]!r}); re-run 'wsss candidates' on this split")
    failed = [i for i in dataset.ids if not folder.has(i)]  # failed there (bad image): they fail in every round
    if failed:
        log.warning("%s: %d image(s) failed in the candidates stage (e.g. %s); the boxes guide lists them as "
                    "failures and goes on with the others", folder.path, len(failed), failed[0])
    return folder


def train_round(config: BoxSupConfig, round_index: int, dataset: Dataset, labels: StageFolder, run_dir: Path,
                *, val_dataset: Dataset | None, overwrite: bool = False) -> tuple[Path, dict | None]:
    """Train the round's network on ``labels`` into ``RUN/train/boxsup_r<round>/`` (resumable) with the train
    stage's runner (:func:`wsss.stages.train.run_train`); returns ``(checkpoint, validation quality or None)``. A
    finished training is not rerun."""
    from ..runtime import CHECKPOINT
    from .train import run_train

    train_config = dataclasses.replace(config.train, seed=config.boxsup_seed + round_index,
                                       checkpoint_every=max(1, min(config.train.checkpoint_every,
                                                                   config.train.iterations)))
    method = f"boxsup_r{round_index}"
    stage_dir = run_dir / "train" / method
    # --overwrite keeps a round's training whose hash is unchanged (round 1 does not hash the update rule): the same
    # hash retrains to the same weights; a changed one is redone by _prepare_owned
    del overwrite
    digest = _prepare_owned(stage_dir, stage="train", method=method,
                            config=(round_settings(config, round_index, labels=False), train_config),
                            dataset=dataset, upstream={"labels": labels}, overwrite=False)
    ckpt = stage_dir / CHECKPOINT
    info = read_json(stage_dir / "stage.json")
    if info.get("status") in ("complete", "complete_with_failures") and ckpt.exists():
        return ckpt, info.get("quality")
    warm_from = None
    if config.warm_start and round_index > 1:  # continue from the previous round's network (the paper's one run)
        warm_from = run_dir / "train" / f"boxsup_r{round_index - 1}" / CHECKPOINT
    if val_dataset is not None and all(val_dataset.gt_path(i) is None for i in val_dataset.ids):
        val_dataset = None  # a split without GT: the rounds go unscored
    summary = run_train(config.model, dataclasses.replace(train_config, loader_workers=0), dataset, run_dir,
                        labels=labels, val_dataset=val_dataset, device=config.device, stage_dir=stage_dir,
                        digest=digest, init_from=warm_from,
                        extra_meta={"boxsup_round": round_index,
                                    "warm_start_from": str(warm_from) if warm_from else None})
    return summary.checkpoint, summary.validation


def run_boxsup_rounds(config: BoxSupConfig, dataset: Dataset, run_dir: Path, *, workers: int = 1,
                      overwrite: bool = False, overlays: int = 0) -> list[dict]:
    """Run (or resume) every round; returns one record per round (folders, label quality, network quality)."""
    from ..runtime import pick_device

    _check(config)
    run_dir = Path(run_dir)
    cand_folder = ensure_candidates(config, dataset, run_dir, workers=workers)
    val_dataset = open_dataset(dataset.root, config.val_split) if config.val_split else None
    holdout = _holdout_dataset(config, dataset)
    device = pick_device(config.device)
    records = []
    labels: StageFolder | None = None
    best_holdout: float | None = None
    for r in range(config.boxsup_rounds + 1):
        checkpoint, network_quality = None, None
        if r > 0:
            checkpoint, network_quality = train_round(config, r, dataset, labels, run_dir, val_dataset=val_dataset,
                                                      overwrite=overwrite)
        stage_dir = run_dir / "labels" / f"boxes_r{r}"
        upstream = {"candidates": cand_folder}
        if checkpoint is not None:
            upstream["network"] = StageFolder(checkpoint.parent)
        digest = _prepare_owned(stage_dir, stage="labels", method=f"boxes_r{r}",
                                config=RoundLabelsConfig(round_settings(config, r, labels=True)),
                                dataset=dataset, upstream=upstream, overwrite=overwrite)
        agreement = None
        if _complete(stage_dir, digest):
            log.info("round %d: %s is complete, skipped", r, stage_dir)
            info = read_json(stage_dir / "stage.json")
            quality = info.get("quality")
            agreement = info.get("network_agreement")
        else:
            lam_scale = 1.0
            if checkpoint is not None and config.network_gate:
                agreement = network_agreement(checkpoint, dataset, labels, images=config.gate_images,
                                              scales=config.predict_scales, device=str(device))
                lam_scale = max(0.0, agreement["kappa"])
                agreement["lambda_used"] = round(config.boxsup_lambda * lam_scale, 6)
                log.info("round %d: the network's kappa against its training labels is %.3f (%d images): lambda "
                         "%.4g", r, agreement["kappa"], agreement["images"], agreement["lambda_used"])
            job = BoxSupRoundJob(str(cand_folder.path), config, r, str(checkpoint) if checkpoint else None,
                                 str(device), lam_scale)
            round_workers = 1 if device.type == "cuda" and checkpoint is not None else workers
            summary = run_images(stage_dir, dataset=dataset, job=job, workers=round_workers, overlays=overlays,
                                 torch_threads=1 if round_workers > 1 else None,
                                 extra_info={"boxsup_round": r, "network": str(checkpoint) if checkpoint else None,
                                             "network_agreement": agreement},
                                 desc=f"labels/boxes_r{r}")
            if summary.failed:  # image by image: the next round trains on the rest, the guide lists them
                log.warning("%s: %d image(s) failed in BoxSup round %d (e.g. %s: %s); see its manifest.csv",
                            stage_dir, len(summary.failed), r, summary.failed[0][0], summary.failed[0][1])
            quality = summary.quality
        holdout_miou, kept = None, True
        if holdout is not None:
            holdout_miou = evaluate_folder(stage_dir, holdout, workers=workers)["miou"]
            kept = best_holdout is None or holdout_miou >= best_holdout
            log.info("round %d: labels score %.2f on the held-out %s (best so far %s): %s", r, holdout_miou,
                     config.holdout_split, "-" if best_holdout is None else f"{best_holdout:.2f}",
                     "kept" if kept else "not kept, the next round trains on the best round's labels")
        if kept:
            best_holdout = holdout_miou
            labels = StageFolder.open(stage_dir)
        records.append({"round": r, "labels": str(stage_dir), "labels_miou": (quality or {}).get("miou"),
                        "holdout_miou": holdout_miou, "kept": kept,
                        "network": str(checkpoint.parent) if checkpoint else None,
                        "network_val_miou": (network_quality or {}).get("miou"),
                        "network_kappa": (agreement or {}).get("kappa"),
                        "lambda_used": (agreement or {}).get("lambda_used")})
    return records


def selected_round(records: list[dict]) -> dict:
    """The round whose labels the guide keeps: the last one kept (every round without --holdout-split)."""
    return [rec for rec in records if rec["kept"]][-1]


def _holdout_dataset(config: BoxSupConfig, dataset: Dataset) -> Dataset | None:
    """The --holdout-split images: a subset of the training split, with GT."""
    if not config.holdout_split:
        return None
    holdout = open_dataset(dataset.root, config.holdout_split)
    training = set(dataset.ids)
    outside = [i for i in holdout.ids if i not in training]
    if outside:
        raise ConfigError(f"--holdout-split {config.holdout_split!r}: {len(outside)} of its {len(holdout.ids)} "
                          f"images (e.g. {outside[0]}) are not in the training split {dataset.split!r}; hold out "
                          f"images the rounds label, e.g. '{dataset.split}[::4]'")
    if all(holdout.gt_path(i) is None for i in holdout.ids):
        raise ConfigError(f"--holdout-split {config.holdout_split!r}: none of its images has a GT mask in "
                          f"{dataset.root}; the held-out check needs GT (or leave the option out)")
    return holdout


def boxes_guide_job(config: BoxSupConfig, *, stage_dir: Path, dataset: Dataset, upstream: dict, workers: int):
    """The ``boxes`` guide: run every round first (resumable), then copy the selected round's masks (the last, or
    the best on --holdout-split) into the guide's own folder ``RUN/labels/boxes/`` with a ``boxsup.json`` summary."""
    run_dir = Path(stage_dir).parent.parent
    records = run_boxsup_rounds(config, dataset, run_dir, workers=workers)
    chosen = selected_round(records)
    write_json(Path(stage_dir) / "boxsup.json", {"rounds": records, "selected_round": chosen["round"],
                                                  "holdout_split": config.holdout_split})
    return CopyLabelsJob(chosen["labels"])


def run_boxes_guide(config: BoxSupConfig, dataset: Dataset, run_dir: Path, *, workers: int = 1,
                    overwrite: bool = False, overlays: int = 0) -> tuple[StageSummary, list[dict]]:
    """Every round, then ``RUN/labels/boxes/``; returns the guide's stage summary and the round records."""
    from .runner import MethodSpec

    spec = MethodSpec(BoxSupConfig, boxes_guide_job, BOXES_SUMMARY)
    summary = run_method_stage("labels", "boxes", spec, config, dataset, Path(run_dir), upstream={},
                               workers=workers, overwrite=overwrite, overlays=overlays)
    return summary, read_json(summary.stage_dir / "boxsup.json")["rounds"]


BOXES_SUMMARY = "BoxSup: candidate masks per box, re-selected with a network trained each round (needs boxes)"
