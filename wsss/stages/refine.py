"""``wsss refine --crf|--affinity --input STAGE``: the refiner registry, the dense-CRF and the affinity jobs.

A refiner reads any upstream stage folder through its ``manifest.csv`` (:class:`~wsss.folders.StageFolder`,
role ``input``) and writes ``RUN/refined/<refiner>/`` with the same folder contract. The CRF's unary comes from the
input's ``scores/`` when it keeps them (``unary='auto'``), else from its hard masks; the algorithm is
:func:`wsss.crf.crf_refine`. The affinity refiner walks a CAM stage's ``scores/`` over the features of the
classifier that made them (:mod:`wsss.seeds.affinity`) and writes the walked maps as ``scores/``, so that the guide
labeller reads them as it reads CAMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import AffinityConfig, AffinityNetConfig, CRFConfig
from ..datasets import Dataset, Sample
from ..errors import ConfigError, ImageError, StageError
from ..folders import StageFolder
from .runner import ImageResult, MethodSpec, StageSummary, load_once, run_method_stage


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
            scores, class_ids = _input_scores(folder, sample)
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


def _input_scores(folder: StageFolder, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The input's (K, H, W) scores of ``sample`` at the image's size (bilinear when stored smaller) and class ids."""
    return folder.scores_at(sample.id, sample.image.shape[:2])


@dataclass
class AffinityJob:
    """Random walk of one image's CAMs over its classifier's feature affinity (the model loads lazily)."""

    checkpoint: str
    config: AffinityConfig
    needs_image = True
    uses_torch = True  # the runner caps each pool worker's torch threads

    def model(self):
        from ..runtime import pick_device
        from ..trainers.cam_classifier import load_classifier

        device = pick_device(self.config.device)
        return load_once(self.checkpoint, lambda: load_classifier(self.checkpoint, device=device), str(device))

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..seeds.affinity import propagate_cams

        c = self.config
        return _walked(*_input_scores(upstream["input"], sample),
                       lambda maps: propagate_cams(self.model(), sample.image, maps, stride=c.stride, radius=c.radius,
                                                   beta=c.beta, log_t=c.log_t), c.bg_threshold)


def _walk_inputs(config, upstream: dict, flag: str) -> tuple[StageFolder, str]:
    """The checks both walks share: the input cam stage (with scores/), the walk's settings, and the classifier
    (``--checkpoint``, else the input stage's ``classifier.pt`` or the ``--checkpoint`` it was made with)."""
    if "input" not in upstream:
        raise StageError(f"wsss refine {flag} needs --input RUN/seeds/cam (a stage folder with CAM scores/)")
    for name, value, low in (("--radius", config.radius, 1.0), ("--log-t", config.log_t, 0),
                             ("--beta", config.beta, 0.0)):
        if value < low:
            raise ConfigError(f"{name} {value}: give at least {low:g}")
    folder: StageFolder = upstream["input"]
    if not folder.has_scores:
        raise StageError(f"{folder.path}: keeps no scores/; the affinity walk spreads CAMs: give a cam stage "
                         "(RUN/seeds/cam)")
    checkpoint = config.checkpoint or _input_classifier(folder)
    if not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint {checkpoint}: no such file; give the classifier.pt of the cam stage")
    return folder, str(checkpoint)


def _walked(scores: np.ndarray, class_ids, walk, bg_threshold: float) -> ImageResult:
    """``walk(maps)`` of the foreground ``scores`` (a background map, e.g. CRF marginals, is not walked), stored as
    float16 (so the kept scores reproduce the mask) and their dense label map at ``bg_threshold``."""
    from ..seeds.cam import cam_seed_mask

    keep = np.asarray(class_ids) != 0
    scores, class_ids = scores[keep].astype(np.float32), np.asarray(class_ids)[keep]
    walked = walk(scores).astype(np.float16).astype(np.float32)
    return ImageResult(cam_seed_mask(walked, class_ids, bg_threshold=bg_threshold), scores=walked,
                       class_ids=class_ids)


def _affinity_job(config: AffinityConfig, *, upstream: dict, **_):
    """The affinity job on the input's CAMs and their classifier (:func:`_walk_inputs`)."""
    _, checkpoint = _walk_inputs(config, upstream, "--affinity")
    job = AffinityJob(checkpoint, config)
    job.model()  # fail early (unreadable checkpoint) before the image loop
    return job


def _input_classifier(folder: StageFolder) -> str:
    from ..trainers.cam_classifier import CHECKPOINT, RECAM_CHECKPOINT

    for name in (RECAM_CHECKPOINT, CHECKPOINT):  # ReCAM's fine-tuned classifier made the CAMs when it is there
        own = folder.path / name
        if own.is_file():
            return str(own)
    given = (folder.info.get("config") or {}).get("checkpoint")
    if given:
        return str(given)
    raise ConfigError(f"{folder.path}: no classifier.pt there and its stage.json names none; give --checkpoint "
                      "(the classifier.pt of the cam stage that made these CAMs)")


@dataclass
class AffinityNetJob:
    """Random walk of one image's CAMs over a trained AffinityNet's affinity (the nets load lazily)."""

    checkpoint: str  # the classifier
    head: str        # the trained affinity_head.pt
    config: AffinityNetConfig
    needs_image = True
    uses_torch = True

    def net(self):
        from ..runtime import pick_device
        from ..trainers.affinity_head import load_affinity_net
        from ..trainers.cam_classifier import load_classifier

        device = pick_device(self.config.device)
        return load_once(self.head, lambda: load_affinity_net(self.head, load_classifier(self.checkpoint),
                                                              device=device), self.checkpoint, str(device))

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..seeds.affinity import propagate_cams_learned

        c = self.config
        return _walked(*_input_scores(upstream["input"], sample),
                       lambda maps: propagate_cams_learned(self.net(), sample.image, maps, radius=c.radius,
                                                           beta=c.beta, log_t=c.log_t), c.bg_threshold)


def _affinitynet_job(config: AffinityNetConfig, *, upstream: dict, dataset: Dataset, stage_dir: Path, **_):
    """Train the head into the stage folder (resumable; unless ``--head`` is given) on the regions of ``--labels``
    (or the upstream role ``labels``; default: the input), then the job walking the input's CAMs."""
    from ..trainers.affinity_head import train_affinity_head

    folder, checkpoint = _walk_inputs(config, upstream, "--affinitynet")
    given = upstream.get("labels")
    if given is not None and config.labels:
        raise ConfigError("give the training regions once: --labels or the recipe input 'labels', not both")
    if config.head:
        if given is not None or config.labels:
            raise ConfigError("--head uses a trained head: --labels (what to train on) does not apply; give one")
        head = config.head
    else:
        labels = given if given is not None else StageFolder.open(config.labels) if config.labels else folder
        if not labels.has_scores:
            raise StageError(f"{labels.path}: keeps no scores/ to learn the affinity from; give --labels a stage "
                             "with scores/ (e.g. RUN/refined/affinity)")
        head = str(train_affinity_head(dataset, labels, checkpoint, stage_dir, config))
    job = AffinityNetJob(checkpoint, str(head), config)
    job.net()  # fail early (unreadable head, another classifier) before the image loop
    return job


REFINERS: dict[str, MethodSpec] = {
    "crf": MethodSpec(CRFConfig, _crf_job, "dense CRF over the labels present (unary from scores/ or masks)",
                      upstream=("input",)),
    "affinity": MethodSpec(AffinityConfig, _affinity_job, "random walk of CAMs over their classifier's feature "
                           "affinity (psa/IRN's propagation, training-free); walked maps in scores/",
                           writes_scores=True, upstream=("input",)),
    "affinitynet": MethodSpec(AffinityNetConfig, _affinitynet_job, "psa's AffinityNet: a head on the frozen "
                              "classifier learns the affinity from confident regions (--labels), then the CAMs walk "
                              "over it; walked maps in scores/", writes_scores=True, upstream=("input",),
                              optional_upstream=("labels",)),
}


def run_refine(method: str, config, dataset: Dataset, run_dir: Path, *, input_path: str | Path, workers: int = 1,
               overwrite: bool = False, overlays: int = 0) -> StageSummary:
    """Open the input stage folder and run refiner ``method`` into ``run_dir/refined/<method>/``."""
    upstream = {"input": StageFolder.open(input_path)}
    return run_method_stage("refined", method, REFINERS[method], config, dataset, run_dir, upstream=upstream,
                            workers=workers, overwrite=overwrite, overlays=overlays)
