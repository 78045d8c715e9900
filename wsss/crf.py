"""Dense CRF (Krähenbühl & Koltun 2011, via pydensecrf) over the labels present in the image.

:func:`dense_crf` is the bare mean-field inference on (K, H, W) probabilities; :func:`unary_from_mask` turns a
hard mask into probabilities; :func:`crf_refine` is what the refine stage calls: it picks the labels present,
builds the unary from scores or from the mask, applies the optional box prior, runs the CRF only over the region
that can hold objects, and returns a mask.

Rules of :func:`crf_refine`
---------------------------
* **Labels present**: background, the image's tags, the classes of its boxes and the classes in the mask (or, from
  scores, the score channels among those; all score channels when the image has no tags). Fewer labels, faster
  inference, and no absent class can appear.
* **Unary**: from ``scores`` (probabilities, ``-log p``) when given, else from the mask: a labelled pixel puts
  ``confidence`` on its label and spreads the rest evenly, a 255 pixel is uniform (the CRF decides it).
* **Box prior** (``box_prior=True`` and every class taking part has a box): a class may only appear inside one of
  its own boxes, and a pixel outside every box is background. The CRF then runs on the crop around the union of
  the boxes (plus ``box_margin`` pixels of context), everything outside it is background. With ``per_box``
  (default) the CRF runs once per box on the box's crop (plus a tenth of its size, at least ``box_margin`` pixels,
  of context) over the labels that can occur there, and labels the box; boxes go large to small, so a smaller
  box's result is written over a larger one's. Far-away background then cannot pull an object's pixels to
  background through the long-range colour kernel.
* **relabel**: ``all`` gives every pixel the CRF's label; ``ignore`` gives it only to the pixels that are 255 in
  the input mask (the doubtful band), the others keep their input label (with ``per_box``, a box without 255
  pixels is skipped).
* **keep_ignore**: a pixel that is 255 in the input mask stays 255 (``False``: the CRF labels it).
"""

from __future__ import annotations

import numpy as np

from .conventions import BACKGROUND, IGNORE

#: pairwise-term presets: DeepLab (Chen et al., VOC: w=4, xy=121, rgb=5; Gaussian w=3, xy=3), PSA/AffinityNet
#: (Ahn & Kwak 2018: bilateral w=10, xy=80, rgb=13; Gaussian w=3, xy=3) and ``box``: DeepLab's with the bilateral
#: weight halved (w=2), chosen on voc-dev train[0:150] for GrabCut box seeds refined with ``relabel='ignore'``
#: (76.23 mIoU vs 75.88 with w=4 on the same seeds; bench/RESULTS.md, issue 3)
CRF_PRESETS: dict[str, dict[str, float]] = {
    "deeplab": {"sxy_gaussian": 3.0, "compat_gaussian": 3.0, "sxy": 121.0, "srgb": 5.0, "compat": 4.0},
    "psa": {"sxy_gaussian": 3.0, "compat_gaussian": 3.0, "sxy": 80.0, "srgb": 13.0, "compat": 10.0},
    "box": {"sxy_gaussian": 3.0, "compat_gaussian": 3.0, "sxy": 121.0, "srgb": 5.0, "compat": 2.0},
}


def crf_params(preset: str = "psa", *, sxy: float | None = None, srgb: float | None = None,
               compat: float | None = None, sxy_gaussian: float | None = None,
               compat_gaussian: float | None = None) -> dict[str, float]:
    """The preset's pairwise parameters with the explicit ones (not None) replacing them."""
    if preset not in CRF_PRESETS:
        raise ValueError(f"unknown CRF preset {preset!r}; choose one of {', '.join(CRF_PRESETS)}")
    params = dict(CRF_PRESETS[preset])
    for key, value in (("sxy", sxy), ("srgb", srgb), ("compat", compat), ("sxy_gaussian", sxy_gaussian),
                       ("compat_gaussian", compat_gaussian)):
        if value is not None:
            params[key] = float(value)
    return params


def dense_crf(image: np.ndarray, probs: np.ndarray, *, iterations: int = 10, sxy: float = 80.0,
              srgb: float = 13.0, compat: float = 10.0, sxy_gaussian: float = 3.0, compat_gaussian: float = 3.0,
              min_prob: float = 1e-5) -> np.ndarray:
    """Mean-field dense CRF.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    probs : (K, H, W) float, per-label probabilities (need not be normalised; clipped at ``min_prob``)
    iterations : mean-field steps
    sxy, srgb, compat : bilateral (appearance) kernel: position and colour standard deviations, weight
    sxy_gaussian, compat_gaussian : Gaussian (smoothness) kernel: position standard deviation, weight

    Returns
    -------
    (K, H, W) float32 marginals
    """
    import pydensecrf.densecrf as dcrf

    probs = np.asarray(probs, np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs {probs.shape} do not match the image {image.shape[:2]}; expected (K, H, W)")
    k, h, w = probs.shape
    if k == 1:
        return np.ones((1, h, w), np.float32)
    unary = -np.log(np.clip(probs, min_prob, None)).reshape(k, -1)
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.array(image, np.uint8, order="C", copy=True), compat=compat)
    q = crf.inference(int(iterations))
    return np.asarray(q, np.float32).reshape(k, h, w)


def unary_from_mask(mask: np.ndarray, class_ids, confidence: float = 0.7) -> np.ndarray:
    """(K, H, W) float32 probabilities from a hard mask over ``class_ids``: a labelled pixel has ``confidence`` on
    its label and ``(1 - confidence) / (K - 1)`` on each other; a 255 pixel (or a label not in ``class_ids``) is
    uniform."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    class_ids = np.asarray(class_ids, np.int64)
    k = len(class_ids)
    if k == 1:
        return np.ones((1,) + mask.shape, np.float32)
    rest = (1.0 - confidence) / (k - 1)
    probs = np.full((k,) + mask.shape, rest, np.float32)
    labelled = np.zeros(mask.shape, bool)
    for i, c in enumerate(class_ids):
        here = mask == c
        probs[i][here] = confidence
        labelled |= here
    probs[:, ~labelled] = 1.0 / k
    return probs


def _box_allowed(shape, boxes: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """(K, H, W) bool: background everywhere, class c only inside its boxes."""
    allowed = np.zeros((len(class_ids),) + tuple(shape), bool)
    for i, c in enumerate(class_ids):
        if c == BACKGROUND:
            allowed[i] = True
            continue
        for _, x0, y0, x1, y1 in boxes[boxes[:, 0] == c]:
            allowed[i, y0:y1, x0:x1] = True
    return allowed


def crf_refine(image: np.ndarray, *, mask: np.ndarray | None = None, scores: np.ndarray | None = None,
               class_ids=None, image_labels=(), boxes: np.ndarray | None = None, box_prior: bool = True,
               box_margin: int = 16, per_box: bool = True, keep_ignore: bool = False, relabel: str = "all",
               confidence: float = 0.7,
               iterations: int = 10,
               preset: str = "deeplab", sxy: float | None = None, srgb: float | None = None,
               compat: float | None = None) -> np.ndarray:
    """Refine a seed/pseudo mask with a dense CRF by the rules in the module docstring.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    mask : (H, W) uint8 in {0..K, 255}; needed for the unary when ``scores`` is None, and for ``keep_ignore``
    scores : (K', H, W) float probabilities with ``class_ids`` (K',) naming their classes
    image_labels : the image's class tags (background excluded)
    boxes : (N, 5) ``[class, x0, y0, x1, y1]`` in pixels (x1/y1 exclusive), for the box prior

    Returns
    -------
    (H, W) uint8 mask
    """
    if mask is None and scores is None:
        raise ValueError("crf_refine needs a mask or scores")
    if relabel not in ("all", "ignore"):
        raise ValueError(f"relabel must be 'all' or 'ignore', not {relabel!r}")
    h, w = image.shape[:2]
    boxes = np.zeros((0, 5), np.int64) if boxes is None else np.asarray(boxes, np.int64).reshape(-1, 5)
    wanted = {BACKGROUND, *(int(c) for c in image_labels), *(int(c) for c in boxes[:, 0])}
    if mask is not None:
        if mask.shape != (h, w):
            raise ValueError(f"mask {mask.shape} does not match the image {(h, w)}")
        wanted |= {int(v) for v in np.unique(mask) if v != IGNORE}
    if scores is not None:
        scores = np.asarray(scores, np.float32)
        ids = np.asarray(class_ids, np.int64).reshape(-1)
        if scores.ndim != 3 or scores.shape[0] != ids.size or scores.shape[1:] != (h, w):
            raise ValueError(f"scores {scores.shape} with {ids.size} class ids do not match the image {(h, w)}")
        keep = [i for i, c in enumerate(ids) if c == BACKGROUND or not image_labels or int(c) in wanted]
        labels = ids[keep]
        probs = scores[keep]
        if BACKGROUND not in labels.tolist():  # scores without a background map: background = 1 - max
            labels = np.concatenate([[BACKGROUND], labels])
            probs = np.concatenate([1.0 - probs.max(axis=0, keepdims=True), probs])
    else:
        labels = np.array(sorted(wanted), np.int64)
        probs = unary_from_mask(mask, labels, confidence)

    y0, y1, x0, x1 = 0, h, 0, w
    boxed = {int(c) for c in boxes[:, 0]}
    box_prior = box_prior and len(boxes) > 0 and all(int(c) in boxed for c in labels if c != BACKGROUND)
    if box_prior:
        allowed = _box_allowed((h, w), boxes, labels)
        probs = np.where(allowed, probs, 0.0).astype(np.float32)
        y0, y1 = max(0, int(boxes[:, 2].min()) - box_margin), min(h, int(boxes[:, 4].max()) + box_margin)
        x0, x1 = max(0, int(boxes[:, 1].min()) - box_margin), min(w, int(boxes[:, 3].max()) + box_margin)
    params = crf_params(preset, sxy=sxy, srgb=srgb, compat=compat)
    out = np.full((h, w), BACKGROUND, np.uint8)
    if box_prior and per_box:  # one CRF per box over its crop; large boxes first, smaller ones written over
        areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        for _, bx0, by0, bx1, by1 in boxes[np.argsort(-areas, kind="stable")]:
            if relabel == "ignore" and mask is not None and not (mask[by0:by1, bx0:bx1] == IGNORE).any():
                continue  # nothing to relabel in this box: its pixels keep their input label
            my, mx = max(box_margin, (by1 - by0) // 10), max(box_margin, (bx1 - bx0) // 10)
            cy0, cy1, cx0, cx1 = max(0, by0 - my), min(h, by1 + my), max(0, bx0 - mx), min(w, bx1 + mx)
            sub = probs[:, cy0:cy1, cx0:cx1]
            present = [k for k in range(len(labels)) if labels[k] == BACKGROUND or sub[k].max() > 0]
            q = dense_crf(np.ascontiguousarray(image[cy0:cy1, cx0:cx1]), sub[present], iterations=iterations,
                          **params)
            crop = labels[present][np.argmax(q, axis=0)].astype(np.uint8)
            out[by0:by1, bx0:bx1] = crop[by0 - cy0:by1 - cy0, bx0 - cx0:bx1 - cx0]
    else:
        q = dense_crf(np.ascontiguousarray(image[y0:y1, x0:x1]), probs[:, y0:y1, x0:x1], iterations=iterations,
                      **params)
        out[y0:y1, x0:x1] = labels[np.argmax(q, axis=0)].astype(np.uint8)
    if box_prior:
        inside = np.zeros((h, w), bool)
        for _, bx0, by0, bx1, by1 in boxes:
            inside[by0:by1, bx0:bx1] = True
        out[~inside] = BACKGROUND
    if relabel == "ignore" and mask is not None:
        out = np.where(mask == IGNORE, out, mask).astype(np.uint8)
    if keep_ignore and mask is not None:
        out[mask == IGNORE] = IGNORE
    return out
