"""Segmentation models and their registry.

``MODELS`` maps the CLI name (``wsss train --model NAME``) to a builder. Every builder takes the same keyword-only
arguments: ``num_classes``, ``backbone`` (omitted: the paper's backbone), ``weights`` (``None`` = random init,
``"imagenet"`` = torchvision's ImageNet weights) and model-specific extras; ``forward`` returns (N, K, H, W) logits
at the input size.

Learning-rate groups: a model keeps its (pretrained) backbone in ``self.backbone``; every other parameter is the
head, which the training recipe gives 10x the learning rate (:func:`split_parameters`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError
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


def build_model(name: str, *, num_classes: int, backbone: str | None = None, weights: str | None = None,
                **kw) -> nn.Module:
    """Build registered model ``name``; ``backbone=None`` keeps the builder's (the paper's) default. ``weights``: None
    (random init), ``"imagenet"`` or the path of a wsss CAM classifier checkpoint (its ResNet becomes the backbone)."""
    if name not in MODELS:
        raise ConfigError(f"--model {name!r}: unknown model; choose one of {', '.join(sorted(MODELS))}")
    if backbone is not None:
        kw["backbone"] = backbone
    from .backbones import init_backbone_from_checkpoint, is_checkpoint_weights

    if is_checkpoint_weights(weights):  # a wsss classifier checkpoint: its ResNet initialises the backbone
        model = MODELS[name](num_classes=num_classes, weights=None, **kw)
        init_backbone_from_checkpoint(model, weights)
        return model
    return MODELS[name](num_classes=num_classes, weights=weights, **kw)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(backbone parameters, head parameters)``: the backbone is ``model.backbone`` when the model has one
    (models without a separate backbone put everything in the head list)."""
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in backbone_ids], [p for p in params if id(p) not in backbone_ids]
