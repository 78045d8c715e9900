"""``wsss refine --crf --input STAGE``: the refiner registry and the dense-CRF job.

A refiner reads any upstream stage folder through its ``manifest.csv`` (:class:`~wsss.folders.StageFolder`,
role ``input``) and writes ``RUN/refined/<refiner>/`` with the same folder contract. The CRF's unary comes from the
input's ``scores/`` when it keeps them (``unary='auto'``), else from its hard masks; the algorithm is
:func:`wsss.crf.crf_refine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import CRFConfig
from ..datasets import Dataset, Sample
from ..errors import ConfigError, ImageError, StageError
from ..folders import StageFolder
from .runner import ImageResult, MethodSpec, StageSummary, run_method_stage


@dataclass
class CRFJob:
    config: CRFConfig
    use_scores: bool
    needs_image = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..crf import crf_refine

        folder: StageFolder = upstream["input"]
        shape = sample.image.shape[:2]
        mask = folder.mask(sample.id)
        if mask.shape != shape:
            raise ImageError(f"{folder.path}: mask of {sample.id!r} is {mask.shape[1]}x{mask.shape[0]}, the image "
                             f"{shape[1]}x{shape[0]}; the input stage was made from another dataset")
        scores = class_ids = None
        if self.use_scores and folder.rows.get(sample.id, {}).get("scores"):
            scores, class_ids = folder.scores(sample.id)
            if scores.shape[1:] != shape:
                import cv2

                scores = np.stack([cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
                                   for m in scores])
        elif self.config.unary == "scores":
            raise ImageError(f"{folder.path}: no scores for {sample.id!r} in its manifest; use --unary masks")
        c = self.config
        out = crf_refine(sample.image, mask=mask, scores=scores, class_ids=class_ids,
                         image_labels=sample.image_labels, boxes=sample.boxes, box_prior=c.box_prior,
                         per_box=c.per_box, keep_ignore=c.keep_ignore, relabel=c.relabel,
                         confidence=c.confidence, iterations=c.crf_iterations,
                         preset=c.preset, sxy=c.sxy, srgb=c.srgb, compat=c.compat)
        return ImageResult(out)


def _crf_job(config: CRFConfig, *, upstream: dict, **_):
    if "input" not in upstream:
        raise StageError("wsss refine --crf needs --input STAGE_FOLDER (e.g. RUN/seeds/grabcut)")
    if not 0.0 < config.confidence < 1.0:
        raise ConfigError(f"--confidence {config.confidence}: give a probability strictly between 0 and 1")
    if config.crf_iterations < 1:
        raise ConfigError(f"--crf-iterations {config.crf_iterations}: give at least 1")
    folder: StageFolder = upstream["input"]
    if config.unary == "scores" and not folder.has_scores:
        raise StageError(f"{folder.path}: keeps no scores/; use --unary masks (or auto), or refine a stage that "
                         "writes scores (e.g. seeds --method grabcut or cam)")
    return CRFJob(config, use_scores=config.unary != "masks" and folder.has_scores)


REFINERS: dict[str, MethodSpec] = {
    "crf": MethodSpec(CRFConfig, _crf_job, "dense CRF over the labels present (unary from scores/ or masks)",
                      upstream=("input",)),
}


def run_refine(method: str, config, dataset: Dataset, run_dir: Path, *, input_path: str | Path, workers: int = 1,
               overwrite: bool = False, overlays: int = 0) -> StageSummary:
    """Open the input stage folder and run refiner ``method`` into ``run_dir/refined/<method>/``."""
    upstream = {"input": StageFolder.open(input_path)}
    return run_method_stage("refined", method, REFINERS[method], config, dataset, run_dir, upstream=upstream,
                            workers=workers, overwrite=overwrite, overlays=overlays)


def upstream_split(path: str | Path) -> str | None:
    """The split an upstream stage folder was made on (its ``stage.json``), or None."""
    info = Path(path) / "stage.json"
    if not info.exists():
        return None
    from ..io import read_json

    try:
        return read_json(info).get("inputs", {}).get("dataset", {}).get("split")
    except (ValueError, OSError, AttributeError):
        return None
