"""Saliency seeds (Oh et al., CVPR 2017): GrabCut training targets from boxes, a class-agnostic saliency net,
its training loop, prediction, the saliency stage's seed mask and saliency quality measures.

Everything here works on arrays and modules; the stage runner (:mod:`wsss.stages.saliency`) does the file I/O
(target cache, checkpoint, log) through the ``on_epoch`` callback of :func:`train_saliency`.

Rules
-----
* **Training targets from boxes** (:func:`targets_from_boxes`): the GrabCut box seeds of
  :mod:`wsss.seeds.grabcut` (pixels outside every box background, GrabCut inside each box, its doubtful band 255)
  with every class made "salient". Target values: 0 background, 1 salient, 255 ignored by the loss.
* **Training targets from masks** (:func:`mask_targets`): any non-zero label is salient, 0 is background, 255 stays
  ignored (for a separate saliency dataset with binary or class masks).
* **Seed mask** (:func:`saliency_seed_mask`, what ``seeds/saliency/masks`` hold): pixels with saliency
  >= ``saliency_threshold`` take the image's tag when it has exactly one; with several tags the class is unknown
  and they are 255; non-salient pixels are 0. An image without tags is all background.
* **Scores**: one (1, H, W) map of foreground probability stored under the class id :data:`SALIENCY_CLASS_ID`
  (255, "no particular class").
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np

from ..conventions import BACKGROUND, IGNORE

#: class id stored with the saliency map in ``scores/<id>.npz``: 255 = class-agnostic foreground probability.
SALIENCY_CLASS_ID = IGNORE


# ------------------------------------------------------------------------------------------------ targets
def targets_from_boxes(image: np.ndarray, boxes: np.ndarray, *, iterations: int = 5) -> np.ndarray:
    """Training target (H, W) uint8 in {0, 1, 255} from boxes: the GrabCut box seeds of
    :func:`wsss.seeds.grabcut.grabcut_seeds` (default options: doubtful band 255) made class-agnostic by
    :func:`mask_targets`."""
    from .grabcut import grabcut_seeds

    boxes = np.asarray(boxes).reshape(-1, 5)
    if len(boxes) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    mask = grabcut_seeds(image, boxes, iterations=iterations)[0]
    return mask_targets(mask)


def mask_targets(mask: np.ndarray) -> np.ndarray:
    """Saliency target from a label mask: 0 -> 0, 255 -> 255, any class -> 1."""
    mask = np.asarray(mask)
    return np.where(mask == IGNORE, IGNORE, (mask != BACKGROUND).astype(np.uint8)).astype(np.uint8)


def resize_pair(image: np.ndarray, target: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image (area/linear) and its target (nearest) to ``size`` x ``size``."""
    img = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if min(image.shape[:2]) > size
                     else cv2.INTER_LINEAR)
    if target is None:
        return img, None
    return img, cv2.resize(target, (size, size), interpolation=cv2.INTER_NEAREST)


def scale_boxes(boxes: np.ndarray, from_shape: tuple[int, int], size: int) -> np.ndarray:
    """Boxes of an (H, W) image mapped onto its ``size`` x ``size`` resize (x1/y1 stay exclusive)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5).copy()
    h, w = from_shape
    boxes[:, [1, 3]] *= size / w
    boxes[:, [2, 4]] *= size / h
    out = np.empty_like(boxes, dtype=np.int64)
    out[:, 0] = boxes[:, 0]
    out[:, 1:3] = np.floor(boxes[:, 1:3])
    out[:, 3:5] = np.ceil(boxes[:, 3:5])
    return np.clip(out, 0, [255, size, size, size, size])


# ---------------------------------------------------------------------------------------------- training
def _batch_tensors(images: list[np.ndarray], targets: list[np.ndarray] | None = None):
    import torch

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if targets is None:
        return x
    return x, torch.from_numpy(np.stack(targets).astype(np.int64))


def saliency_loss(logits, target):
    """Binary cross-entropy over pixels whose target is 0 or 1 (255 ignored); ``logits`` (N, 1, H, W)."""
    import torch.nn.functional as F

    valid = target != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].float())


def make_optimizer(net, *, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0):
    """Adam with two parameter groups: the encoder (``net.backbone``) at ``lr x backbone_lr_scale`` (0.1 for a
    pretrained encoder, as the papers fine-tune) and the new decoder + head at ``lr``."""
    import torch

    encoder = {id(p) for p in net.backbone.parameters()}
    groups = [{"params": [p for p in net.parameters() if id(p) in encoder], "lr_scale": backbone_lr_scale},
              {"params": [p for p in net.parameters() if id(p) not in encoder], "lr_scale": 1.0}]
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def train_saliency(net, optimizer, images: Sequence[np.ndarray], targets: Sequence[np.ndarray], *, epochs: int,
                   batch_size: int = 8, lr: float = 1e-3, start_epoch: int = 0, seed: int = 0,
                   on_epoch: Callable[[int, float], None] | None = None, progress: bool = True,
                   max_seconds: float | None = None, spent_seconds: float = 0.0,
                   recalibrate: bool = True) -> list[float]:
    """Train ``net`` on equally sized images (S, S, 3) uint8 and targets (S, S) {0, 1, 255} for epochs
    ``start_epoch .. epochs - 1`` with :func:`wsss.fit.fit`; returns the mean loss of each epoch run.

    Poly learning-rate decay (power 0.9) over all ``epochs``; each epoch reshuffles with ``seed + epoch`` and flips
    half the images horizontally, so a resumed run repeats the same schedule. ``on_epoch(epoch, mean_loss)`` is
    called after each epoch (the stage saves its checkpoint and log there).

    Time budget: with ``max_seconds`` the learning rate decays over whichever runs out first, the epochs or the
    budget (``spent_seconds`` were used before a resume), and training ends after the step that spends the budget
    (that epoch is then reported as finished). With ``recalibrate`` the BatchNorm statistics are re-estimated on
    the training images at the end (:func:`recalibrate_batchnorm`).
    """
    from ..fit import FitState, fit

    if len(images) != len(targets) or not images:
        raise ValueError(f"need the same non-zero number of images and targets, got {len(images)} and {len(targets)}")
    n = len(images)
    steps_per_epoch = math.ceil(n / batch_size)

    def epoch_batches(epoch: int):
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(n)
        flips = rng.random(n) < 0.5
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs 2 samples; fold a lone last image into the next epoch
                return
            imgs = [images[i][:, ::-1] if flips[i] else images[i] for i in idx]
            tgts = [targets[i][:, ::-1] if flips[i] else targets[i] for i in idx]
            yield _batch_tensors([np.ascontiguousarray(a) for a in imgs], [np.ascontiguousarray(t) for t in tgts])

    losses = []

    def epoch_done(state) -> None:  # the mean over images, as the stage's log reports it
        sizes = state.epoch_sizes
        losses.append(sum(loss * k for loss, k in zip(state.epoch_losses, sizes)) / max(sum(sizes), 1))
        if on_epoch is not None:
            on_epoch(state.epoch - 1, losses[-1])

    fit(net, optimizer, epoch_batches, saliency_loss, lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
        state=FitState(epoch=start_epoch, elapsed=spent_seconds), budget=max_seconds, on_epoch=epoch_done,
        progress=bool(progress), desc="saliency", unit="step", where="saliency net")
    if recalibrate:
        recalibrate_batchnorm(net, images, batch_size=batch_size)
    net.eval()
    return losses


def recalibrate_batchnorm(net, images: Sequence[np.ndarray], *, batch_size: int = 8, max_images: int = 256,
                          seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running mean/variance as a plain average over ``images`` (a seeded sample of
    at most ``max_images``) with the final weights (one forward pass, no gradient). After short training the
    running averages still mix in the early weights' statistics, which skews the eval-mode output; this removes
    that lag."""
    import torch

    if len(images) > max_images:
        pick = np.random.default_rng(seed).choice(len(images), max_images, replace=False)
        images = [images[i] for i in sorted(pick)]

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or len(images) < 2:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for k in range(0, len(images), batch_size):
            chunk = images[k:k + batch_size]
            if len(chunk) >= 2:
                net(_batch_tensors([np.ascontiguousarray(a) for a in chunk]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


# -------------------------------------------------------------------------------------------- prediction
def predict_saliency(net, image: np.ndarray, *, input_size: int, flip: bool = True) -> np.ndarray:
    """Saliency map (H, W) float32 in [0, 1] of an (H, W, 3) uint8 image: the net runs at ``input_size`` squared
    (averaged with its horizontal flip when ``flip``) and the map is resized back bilinearly."""
    import torch

    h, w = image.shape[:2]
    small, _ = resize_pair(image, None, input_size)
    batch = [small, np.ascontiguousarray(small[:, ::-1])] if flip else [small]
    net.eval()
    with torch.inference_mode():
        prob = torch.sigmoid(net(_batch_tensors(batch)))[:, 0].numpy()
    sal = prob[0] if not flip else 0.5 * (prob[0] + prob[1][:, ::-1])
    return np.clip(cv2.resize(sal.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def saliency_seed_mask(saliency: np.ndarray, image_labels, *, saliency_threshold: float = 0.5) -> np.ndarray:
    """Seed mask (H, W) uint8 of a saliency map by the rule in the module docstring."""
    labels = sorted({int(c) for c in image_labels})
    salient = saliency >= saliency_threshold
    if not labels:
        return np.zeros(saliency.shape, np.uint8)
    value = labels[0] if len(labels) == 1 else IGNORE
    return np.where(salient, value, BACKGROUND).astype(np.uint8)


def saliency_to_png(saliency: np.ndarray) -> np.ndarray:
    """8-bit grey image of a [0, 1] map."""
    return np.clip(np.rint(saliency * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- quality
class SaliencyQuality:
    """Saliency quality against a binary GT foreground, accumulated over images (standard salient-object protocol).

    * **MAE**: mean absolute difference between the [0, 1] map and the 0/1 foreground, averaged over images.
    * **F-measure** with beta^2 = 0.3 (Achanta et al., CVPR 2009): ``adaptive_f`` thresholds each map at twice its
      mean (capped at 1); ``max_f`` averages precision and recall over images at 255 fixed thresholds and reports
      the best F over thresholds. ``f_at_threshold`` is the mean per-image F at ``threshold`` (the binarisation the
      guide labeller uses).
    * **Foreground IoU / precision / recall** at ``threshold`` over the pixels of all images (the segmentation
      view: salient vs object pixels, as an mIoU table counts them).
    Pixels with GT 255 are left out.
    """

    def __init__(self, *, beta2: float = 0.3, threshold: float = 0.5):
        self.beta2 = beta2
        self.threshold = threshold
        self.thresholds = np.arange(1, 256) / 256.0
        self.precision = np.zeros(len(self.thresholds))
        self.recall = np.zeros(len(self.thresholds))
        self.mae, self.adaptive_f, self.fixed_f = [], [], []
        self.tp = self.fp = self.fn = 0

    def _f(self, p: float, r: float) -> float:
        return (1 + self.beta2) * p * r / (self.beta2 * p + r) if (p + r) > 0 else 0.0

    def add(self, saliency: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``saliency`` (H, W) float in [0, 1], ``gt`` (H, W) label mask (non-zero = foreground)."""
        valid = gt != IGNORE
        sal = np.asarray(saliency, np.float64)[valid]
        fg = (gt[valid] != BACKGROUND)
        if sal.size == 0:
            return
        self.mae.append(float(np.abs(sal - fg).mean()))
        n_fg = max(int(fg.sum()), 1)
        # counts of predicted-positive and true-positive pixels per threshold from sorted saliency values
        bins = np.clip((sal * 256).astype(np.int64), 0, 255)
        pos_hist = np.bincount(bins, minlength=256)
        tp_hist = np.bincount(bins[fg], minlength=256)
        pred = np.cumsum(pos_hist[::-1])[::-1][1:]  # sal >= k/256 for k = 1..255
        tp = np.cumsum(tp_hist[::-1])[::-1][1:]
        self.precision += np.where(pred > 0, tp / np.maximum(pred, 1), 0.0)
        self.recall += tp / n_fg
        for thr, out in ((min(2 * sal.mean(), 1.0), self.adaptive_f), (self.threshold, self.fixed_f)):
            binary = sal >= thr
            tp1 = int((binary & fg).sum())
            p = tp1 / binary.sum() if binary.any() else 0.0
            out.append(self._f(p, tp1 / n_fg))
        # the last binarisation is the one at ``threshold``: its pixel counts, summed over images
        self.tp += tp1
        self.fp += int(binary.sum()) - tp1
        self.fn += int(fg.sum()) - tp1

    def result(self) -> dict:
        n = len(self.mae)
        if n == 0:
            return {"images": 0, "mae": None, "max_f": None, "adaptive_f": None, "f_at_threshold": None,
                    "fg_iou": None, "fg_precision": None, "fg_recall": None}
        p, r = self.precision / n, self.recall / n
        f = np.array([self._f(a, b) for a, b in zip(p, r)])
        return {"images": n, "mae": round(float(np.mean(self.mae)), 4), "max_f": round(float(f.max()), 4),
                "max_f_threshold": round(float(self.thresholds[int(f.argmax())]), 3),
                "adaptive_f": round(float(np.mean(self.adaptive_f)), 4),
                "f_at_threshold": round(float(np.mean(self.fixed_f)), 4), "threshold": self.threshold,
                "fg_iou": _pct(self.tp, self.tp + self.fp + self.fn), "fg_precision": _pct(self.tp, self.tp + self.fp),
                "fg_recall": _pct(self.tp, self.tp + self.fn)}


def _pct(num: int, den: int) -> float | None:
    return round(100.0 * num / den, 2) if den else None
