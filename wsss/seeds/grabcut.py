"""Box seeds: plain box fill and GrabCut per box (``cv2.grabCut``), with soft per-class scores for a CRF.

Rules
-----
* **Outside every box** a pixel is background (0): a box is drawn around each object, so what no box covers is
  known background. This holds for every policy below.
* **Box fill** (:func:`box_fill`): each box is painted with its class, boxes sorted by area so that smaller boxes
  are painted over larger ones (a person in front of a horse keeps the person's box).
* **GrabCut per box** (:func:`grabcut_box`): GrabCut runs on a crop around the box (the box plus ``margin`` times
  its size on each side) so that the background colour model is local. The GrabCut mask is initialised from the
  box prior rather than from a bare rectangle: pixels outside every box are definite background (``GC_BGD``),
  pixels outside this box but inside another box are probable background, the box is probable foreground
  (``GC_PR_FGD``) and a centred core of ``core_fraction`` of the box's width and height is definite foreground
  (``GC_FGD``; 0 = no core). GrabCut then runs ``iterations`` rounds.
* **Ensemble over core sizes** (``extra_cores``, default ``(0.3, 0.7)`` beside ``core_fraction`` 0.5): GrabCut runs
  once per core fraction on the same crop; the box's hard foreground is the majority of the runs (at least half of
  them) and its probability ``p`` (below) the mean of theirs. Where the runs disagree, ``p`` moves towards 0.5, so
  the doubtful band below grows exactly where the core prior decided the result (a large core forces background
  into a thin object, a small one lets GrabCut drop the object's parts). On voc-dev train[0:150]: 76.25 mIoU with
  the band filled by the score arg-max vs 75.46 for one run (core 0.5), see bench/RESULTS.md, issue 3.
* **Foreground probability**: from the two colour GMMs GrabCut fitted (decoded from its ``bgdModel`` /
  ``fgdModel`` arrays), ``p_gmm = L_fg / (L_fg + L_bg)`` per pixel, blended with GrabCut's own hard decision
  (which carries its smoothness term): ``p = hard_weight * hard + (1 - hard_weight) * p_gmm``.
* **Doubtful pixels**: a box pixel with ``|p - 0.5| < doubt_margin`` is doubtful. ``uncertain`` decides it:
  ``ignore`` (default) writes 255, as box-supervised work does for the doubtful band, and leaves it to a CRF on
  the scores; ``grabcut`` keeps GrabCut's hard label; ``foreground`` gives the box's class; ``background`` 0.
* **Failed GrabCut**: when GrabCut keeps less than ``min_fill`` of the box as foreground (it "lost" the object),
  the box falls back to its centred core (``fallback_core`` of width and height) as the class with the rest of the
  box doubtful (255 under ``uncertain='ignore'``), and ``p`` is the same prior (0.8 in the core, 0.5 elsewhere).
* **Small boxes**: a box with a side shorter than ``min_box_size`` pixels is too small to fit colour models; it is
  filled with its class (``p = 0.8``).
* **Overlaps**: a pixel claimed as foreground by several boxes takes the class of the box with the highest
  foreground probability (``overlap='confidence'``, default: +1 mIoU over ``smaller`` on voc-dev train[0:100]) or of
  the smallest such box (``overlap='smaller'``).
  A pixel claimed by no box is background, or 255 when it is doubtful in any box covering it (``ignore``).
* **Scores** (for ``scores/`` and the CRF): each box's ``p`` is first shifted by the tight-box prior (an object
  fills most of its box, and GrabCut under-segments: on voc-dev train most of the doubtful band is object):
  ``q = p (1 - t) / (p (1 - t) + (1 - p) t)`` with ``t = score_prior`` (``p = t`` becomes 0.5; ``t = 0.5`` leaves
  ``p`` as it is; default 0.35, i.e. the object's odds times 1.86). Class ``c`` gets the largest ``q`` of its boxes
  covering the pixel, background gets the smallest ``1 - q`` over covering boxes (1 outside every box); the maps
  are normalised to sum to one over ``[0] + classes of the boxes``. The mask (labelled pixels, band, overlaps) does
  not depend on ``score_prior``; the arg-max of the scores and a CRF on them (``wsss refine --crf --relabel
  ignore``) resolve the band towards the box's class. On voc-dev train[0:150] / [150:300], with the box CRF:
  77.26 / 73.71 mIoU at 0.35 vs 76.23 / 72.63 at 0.5.

* **Agreement with a second opinion** (``agree``, optional): an (H, W) mask from another method on the same image,
  typically BoxSup's box-matching candidates (``wsss candidates``' ``masks/``: per box the selective-search region
  whose bounding box fits it best, or the box itself where none fits). A pixel GrabCut labelled but the second
  opinion labels differently becomes doubtful (255): the labels keep only what both methods agree on, as in the
  M∩G labels of Khoreva et al. (CVPR 2017). The scores move towards the second opinion,
  ``s = (s + w * onehot(agree)) / (1 + w)`` with ``w = agree_weight``, so a CRF on the scores resolves the band with
  both. 255 in ``agree`` (no opinion) and classes that are not among the boxes' leave a pixel as it is. On voc-dev
  train[0:300] / [300:800] with the box CRF: 77.69 / 73.27 mIoU vs 75.42 / 70.20 without (bench/RESULTS.md, issue 3).

Bad boxes: the dataset readers clip boxes to the image and refuse a box with no area (``ImageError``). These
functions clip again (so they may be called on any array) and raise :class:`ValueError` for a box with no area
inside the image or a negative class.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..conventions import BACKGROUND, IGNORE

UNCERTAIN_POLICIES = ("ignore", "grabcut", "foreground", "background")
OVERLAP_RULES = ("smaller", "confidence")


# ------------------------------------------------------------------------------------------------ boxes
def check_boxes(boxes, shape: tuple[int, int]) -> np.ndarray:
    """Boxes as (N, 5) int64 ``[class, x0, y0, x1, y1]`` clipped to an image of ``shape`` (H, W).

    Raises :class:`ValueError` naming the box for a box with no area inside the image or a class below 1.
    """
    boxes = np.asarray(boxes if boxes is not None else np.zeros((0, 5)), dtype=np.int64).reshape(-1, 5)
    if len(boxes) == 0:
        return boxes
    h, w = shape
    out = boxes.copy()
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, w)
    out[:, [2, 4]] = np.clip(out[:, [2, 4]], 0, h)
    empty = (out[:, 3] <= out[:, 1]) | (out[:, 4] <= out[:, 2])
    if empty.any():
        raise ValueError(f"box [class, x0, y0, x1, y1] = {boxes[empty][0].tolist()} has no area inside the "
                         f"{w}x{h} image; fix or remove it")
    if (out[:, 0] < 1).any():
        raise ValueError(f"box {boxes[out[:, 0] < 1][0].tolist()} has class {int(out[out[:, 0] < 1][0, 0])}; "
                         "box classes start at 1 (0 is background)")
    return out


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])


def box_fill(shape: tuple[int, int], boxes) -> np.ndarray:
    """Plain box fill: (H, W) uint8, 0 outside every box, each box painted with its class, smaller boxes over
    larger ones (ties: the later box in the list wins)."""
    boxes = check_boxes(boxes, shape)
    out = np.full(shape, BACKGROUND, np.uint8)
    for cls, x0, y0, x1, y1 in boxes[np.argsort(-box_areas(boxes), kind="stable")]:
        out[y0:y1, x0:x1] = cls
    return out


# ---------------------------------------------------------------------------------------------- GrabCut
def _gmm_likelihood(pixels: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Likelihood of (N, 3) float pixels under an OpenCV GrabCut GMM (1, 65) array: 5 weights, 5x3 means,
    5x3x3 covariances."""
    model = np.asarray(model, np.float64).reshape(-1)
    k = 5
    weights = model[:k]
    means = model[k:k + 3 * k].reshape(k, 3)
    covs = model[k + 3 * k:].reshape(k, 3, 3)
    out = np.zeros(len(pixels), np.float64)
    for j in range(k):
        if weights[j] <= 0:
            continue
        cov = covs[j] + np.eye(3) * 1e-2
        det = np.linalg.det(cov)
        if det <= 0:
            continue
        diff = pixels - means[j]
        maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
        out += weights[j] / np.sqrt((2 * np.pi) ** 3 * det) * np.exp(-0.5 * np.minimum(maha, 700.0))
    return out


def grabcut_box(image: np.ndarray, box, *, known_bg: np.ndarray | None = None,
                iterations: int = 5, margin: float = 1.0, core_fraction: float = 0.5,
                hard_weight: float = 0.5, max_side: int | None = 200, colour_space: str = "rgb",
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GrabCut for one box, initialised from the box prior (module docstring).

    Parameters
    ----------
    image : (H, W, 3) uint8
    box : ``[class, x0, y0, x1, y1]`` (x1/y1 exclusive), inside the image
    known_bg : (H, W) bool, pixels known to be background (outside every box); other pixels outside ``box``
        (inside other boxes) start as probable background. Default: everything outside ``box`` is known.
    iterations, margin, core_fraction, hard_weight : see the module docstring
    max_side : GrabCut runs on the crop resized so that its longer side is at most this many pixels (None or 0:
        full resolution); the probabilities are resized back (a CRF recovers the fine boundary)
    colour_space : ``rgb`` or ``lab``: the colour space of GrabCut's colour models
    seed : OpenCV's RNG seed (GrabCut's k-means initialisation), for repeatable results

    Returns
    -------
    hard : (h, w) bool over the box, GrabCut's foreground
    prob : (h, w) float32 over the box, foreground probability ``p`` in [0, 1]
    """
    h, w = image.shape[:2]
    _, x0, y0, x1, y1 = (int(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    mx, my = int(round(margin * bw)) + 2, int(round(margin * bh)) + 2
    cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
    if colour_space == "lab":
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
    elif colour_space != "rgb":
        raise ValueError(f"colour_space must be rgb or lab, not {colour_space!r}")
    if known_bg is None:
        gc = np.full(crop.shape[:2], cv2.GC_BGD, np.uint8)
    else:  # outside this box: definite background unless another box covers it
        gc = np.where(known_bg[cy0:cy1, cx0:cx1], cv2.GC_BGD, cv2.GC_PR_BGD).astype(np.uint8)
    bx0, by0, bx1, by1 = x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0
    gc[by0:by1, bx0:bx1] = cv2.GC_PR_FGD
    if core_fraction > 0:
        kx, ky = int(round(bw * (1 - core_fraction) / 2)), int(round(bh * (1 - core_fraction) / 2))
        if bx1 - kx > bx0 + kx and by1 - ky > by0 + ky:
            gc[by0 + ky:by1 - ky, bx0 + kx:bx1 - kx] = cv2.GC_FGD
    scale = min(1.0, float(max_side) / max(crop.shape[:2])) if max_side else 1.0
    if scale < 1.0:  # GrabCut on a reduced crop; probabilities are resized back to the box
        size = (max(2, int(round(crop.shape[1] * scale))), max(2, int(round(crop.shape[0] * scale))))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        gc = cv2.resize(gc, size, interpolation=cv2.INTER_NEAREST)
    has_bg = (gc == cv2.GC_BGD).any() or (gc == cv2.GC_PR_BGD).any()
    if not has_bg:  # the box covers the whole crop: a frame of 5 % of the size is probable background
        band = max(1, int(round(0.05 * min(gc.shape))))
        gc[:band, :] = cv2.GC_PR_BGD
        gc[-band:, :] = cv2.GC_PR_BGD
        gc[:, :band] = cv2.GC_PR_BGD
        gc[:, -band:] = cv2.GC_PR_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    cv2.grabCut(crop, gc, None, bgd, fgd, max(1, int(iterations)), cv2.GC_INIT_WITH_MASK)
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
    lf = _gmm_likelihood(crop.reshape(-1, 3).astype(np.float64), fgd)
    lb = _gmm_likelihood(crop.reshape(-1, 3).astype(np.float64), bgd)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_gmm = np.where(lf + lb > 0, lf / np.maximum(lf + lb, 1e-300), 0.5).reshape(fg.shape).astype(np.float32)
    prob = hard_weight * fg + (1.0 - hard_weight) * p_gmm
    if scale < 1.0:
        full = (cx1 - cx0, cy1 - cy0)
        prob = cv2.resize(prob, full, interpolation=cv2.INTER_LINEAR)
        fg = cv2.resize(fg, full, interpolation=cv2.INTER_LINEAR)
    prob = np.clip(prob[by0:by1, bx0:bx1], 0.0, 1.0)
    hard = fg[by0:by1, bx0:bx1] >= 0.5
    return hard, prob.astype(np.float32)


def grabcut_seeds(image: np.ndarray, boxes, *, iterations: int = 5, uncertain: str = "ignore",
                  overlap: str = "confidence", min_box_size: int = 8, margin: float = 1.0, core_fraction: float = 0.5,
                  hard_weight: float = 0.5, doubt_margin: float = 0.2, min_fill: float = 0.1,
                  fallback_core: float = 0.5, max_side: int | None = 200, colour_space: str = "rgb",
                  seed: int = 0, extra_cores=(0.3, 0.7), score_prior: float = 0.35,
                  agree: np.ndarray | None = None,
                  agree_weight: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GrabCut seeds from boxes by the rules in the module docstring.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    boxes : (N, 5) ``[class, x0, y0, x1, y1]``, x1/y1 exclusive (clipped to the image; a box with no area inside
        the image raises ValueError)

    score_prior : ``t`` of the score shift (module docstring: scores); 0.5 = no shift
    extra_cores : further core fractions, one more GrabCut run per box each (module docstring: ensemble); ``()``
        for a single run
    agree : optional (H, W) uint8 second-opinion mask (0 background, classes, 255 no opinion); agree_weight its
        weight in the scores (module docstring: agreement)

    Returns
    -------
    mask : (H, W) uint8 in {0, box classes, 255}
    scores : (K, H, W) float32, per-class probabilities summing to 1 over ``class_ids``
    class_ids : (K,) int64, ``[0] + sorted box classes``
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, not {uncertain!r}")
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_RULES)}, not {overlap!r}")
    extra_cores = tuple(float(c) for c in extra_cores)
    if not 0.0 < score_prior < 1.0:
        raise ValueError(f"score_prior must be strictly between 0 and 1, not {score_prior}")
    if any(not 0.0 <= c < 1.0 for c in (core_fraction, *extra_cores)):
        raise ValueError(f"core fractions must be in [0, 1), not {(core_fraction, *extra_cores)}")
    if agree_weight < 0:
        raise ValueError(f"agree_weight must be >= 0, not {agree_weight}")
    h, w = image.shape[:2]
    if agree is not None and np.shape(agree) != (h, w):
        raise ValueError(f"the second-opinion mask is {np.shape(agree)}, the image {(h, w)}")
    boxes = check_boxes(boxes, (h, w))
    class_ids = np.array([BACKGROUND] + sorted(set(boxes[:, 0].tolist())), np.int64)
    if len(boxes) == 0:
        return np.zeros((h, w), np.uint8), np.ones((1, h, w), np.float32), class_ids
    covered = np.zeros((h, w), np.int32)
    for _, x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] += 1
    known_bg = covered == 0
    areas = box_areas(boxes)

    # per-pixel winner bookkeeping
    claim_key = np.full((h, w), -np.inf, np.float32)  # higher wins: -area (smaller) or p (confidence)
    claim_cls = np.zeros((h, w), np.uint8)
    doubtful = np.zeros((h, w), bool)
    class_prob = {int(c): np.zeros((h, w), np.float32) for c in class_ids[1:]}
    bg_prob = np.ones((h, w), np.float32)

    for i, (cls, x0, y0, x1, y1) in enumerate(boxes):
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < min_box_size:
            hard = np.ones((bh, bw), bool)
            prob = np.full((bh, bw), 0.8, np.float32)
            doubt = np.zeros((bh, bw), bool)
        else:
            runs = [grabcut_box(image, (cls, x0, y0, x1, y1), known_bg=known_bg,
                                iterations=iterations, margin=margin, core_fraction=core,
                                hard_weight=hard_weight, max_side=max_side, colour_space=colour_space,
                                seed=seed)
                    for core in (core_fraction, *extra_cores)]
            if len(runs) == 1:
                hard, prob = runs[0]
            else:  # ensemble over core sizes: majority of the hard labels, mean probability
                hard = np.mean([r[0] for r in runs], axis=0) >= 0.5
                prob = np.mean([r[1] for r in runs], axis=0).astype(np.float32)
            if hard.mean() < min_fill:  # GrabCut lost the object: fall back to the box's centred core
                kx, ky = int(round(bw * (1 - fallback_core) / 2)), int(round(bh * (1 - fallback_core) / 2))
                core = np.zeros((bh, bw), bool)
                core[ky:bh - ky, kx:bw - kx] = True
                hard = core
                prob = np.where(core, 0.8, 0.5).astype(np.float32)
                doubt = ~core
            else:
                doubt = np.abs(prob - 0.5) < doubt_margin
            if uncertain == "foreground":
                hard = hard | doubt
            elif uncertain == "background":
                hard = hard & ~doubt
            if uncertain != "ignore":
                doubt = np.zeros_like(doubt)
        region = (slice(y0, y1), slice(x0, x1))
        key = np.float32(-areas[i]) if overlap == "smaller" else prob
        wins = hard & ~doubt & (key > claim_key[region])
        claim_key[region] = np.where(wins, key, claim_key[region])
        claim_cls[region] = np.where(wins, cls, claim_cls[region])
        doubtful[region] |= doubt
        if score_prior != 0.5:  # tight-box prior on the scores (module docstring)
            prob = prob * (1 - score_prior) / (prob * (1 - score_prior) + (1 - prob) * score_prior)
        class_prob[int(cls)][region] = np.maximum(class_prob[int(cls)][region], prob)
        bg_prob[region] = np.minimum(bg_prob[region], 1.0 - prob)

    mask = claim_cls.copy()
    if uncertain == "ignore":
        mask[(claim_key == -np.inf) & doubtful] = IGNORE
    scores = np.stack([bg_prob] + [class_prob[int(c)] for c in class_ids[1:]]).astype(np.float32)
    scores = np.maximum(scores, 1e-4)
    scores /= scores.sum(axis=0, keepdims=True)
    if agree is not None:
        mask, scores = _agree(mask, scores, class_ids, np.asarray(agree), agree_weight)
    return mask, scores, class_ids


def _agree(mask: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, agree: np.ndarray,
           weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Agreement with a second-opinion mask (module docstring): disagreeing labelled pixels become 255, the scores
    move towards the opinion's one-hot by ``weight``."""
    index = np.full(256, -1, np.int64)  # label value -> score channel (-1: no opinion)
    index[class_ids] = np.arange(len(class_ids))
    channel = index[agree.astype(np.uint8)]
    has = channel >= 0
    mask = mask.copy()
    mask[has & (mask != IGNORE) & (mask != agree)] = IGNORE
    if weight > 0 and has.any():
        onehot = np.zeros_like(scores)
        ys, xs = np.nonzero(has)
        onehot[channel[has], ys, xs] = 1.0
        scores = np.where(has[None], (scores + weight * onehot) / (1.0 + weight), scores).astype(np.float32)
    return mask, scores
