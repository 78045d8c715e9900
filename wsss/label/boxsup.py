"""BoxSup (Dai, He & Sun, ICCV 2015): box supervision through candidate masks, re-selected while training.

Pure functions on arrays; the candidates come from :mod:`wsss.label.candidates` and never change.

* **Initial selection** (:func:`initial_selection`): for each GT box the candidate whose tight bounding box has the
  highest IoU with the box. Many candidates match a box almost equally well (a region and the same region with a
  thin strip merged in); among those within ``tie_tolerance`` of the best IoU the *largest* one is taken (then the
  lower index); ``tie_tolerance`` 0 gives the plain arg-max. A box whose best candidate reaches a box IoU below
  ``min_fit`` has no fitting candidate (``NO_CANDIDATE``): it is box-filled (``poor_fit="fill"``) or left 255
  (``"ignore"``) in every round. The guide's defaults (tie 0.1, min_fit 0.7, fill) were chosen on a quarter of
  voc-dev train (``bench/boxsup_initial.py``, bench/RESULTS.md issue 8).
* **Labels** (:func:`labels_from_selection`): the selected candidate's pixels take the box's class, everything else
  is background (0). With ``clip_to_box`` (default) a candidate's pixels outside its box stay background: a box
  encloses its object, so nothing of the object lies outside it. Overlaps: candidates are painted in order of
  decreasing area, so where two selected candidates overlap the *smaller* one wins (a small object in front of a big
  one keeps its pixels), the same rule as box fill; equal areas: the later box wins. ``box_rest="ignore"``: pixels
  inside some box but in no selected candidate are 255 instead of background.
* **Update** (:func:`candidate_costs`, :func:`select_candidates`): with the network's class probabilities ``probs``
  (K, H, W), the cost of candidate ``S`` for box ``B`` of class ``c`` is

  ``(1 - IoU(box(S), B)) + lam * CE(S)``

  where ``CE(S)`` is the network's mean pixel cross-entropy against the labelling that ``S`` gives ``B``: over the
  box's pixels (and, without ``clip_to_box``, the candidate's pixels outside the box too) a pixel in ``S`` is
  labelled ``c`` and costs ``-log p_c``, a pixel not in ``S`` is background and costs ``-log p_0``; the sum is
  divided by the number of those pixels. A candidate is then drawn uniformly at random among the ``top_k``
  lowest-cost ones (``top_k = 1``: the best), with the caller's seeded :class:`numpy.random.Generator`.
* **Balanced** variant (``balanced=True``, not in the paper): ``CE(S)`` is the mean of the foreground pixels' and
  the background pixels' mean cross-entropies, so a network leaning to background does not pick the smallest
  candidates (bench/RESULTS.md, issue 8).
* **Keep margin** (``previous`` + ``margin``, not in the paper): a box keeps its previous (the guide: initial)
  candidate unless the drawn one costs at least ``margin`` less, so a network whose cross-entropies barely differ
  between candidates cannot move the labels.
* **Class-agnostic** term (``agnostic=True``, not in the paper): candidate pixels cost ``-log(1 - p_0)``.
* **Network gate** (:func:`agreement_kappa`, not in the paper): the guide multiplies ``lam`` by the network's
  Cohen's kappa against the labels it was trained on (on a sample of training images, no GT needed), clipped at 0,
  so a network that fits its own training labels no better than chance leaves the labels as they are.

Per-candidate sums are computed per leaf (``bincount``) and combined through the candidates' membership matrix, so
nothing loops over pixels in Python.
"""

from __future__ import annotations

import numpy as np

from ..conventions import BACKGROUND, IGNORE
from .candidates import Candidates

PROB_FLOOR = 1e-6  # probabilities are clipped here before the log, so a confident mistake costs at most ~13.8
NO_CANDIDATE = -1  # selection of a box that no candidate fits (best box IoU below min_fit)
POOR_FIT = ("fill", "ignore")  # what a box without a fitting candidate becomes: box fill, or 255
BOX_REST = ("background", "ignore")  # box pixels outside every selected candidate: background, or 255


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of boxes ``a`` (N, 4) and ``b`` (M, 4) given as ``[x0, y0, x1, y1]`` (x1/y1 exclusive)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _check_boxes(boxes, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(N, 5) int64 boxes, clipped to an image of ``shape`` (H, W) when given (a VOC box at xmin 0 becomes -1 and
    would slice from the far side); a box left without area or with a class below 1 is a ValueError."""
    boxes = np.asarray(boxes if boxes is not None else np.zeros((0, 5)), np.int64).reshape(-1, 5).copy()
    if shape is not None and len(boxes):
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, shape[1])
        boxes[:, [2, 4]] = np.clip(boxes[:, [2, 4]], 0, shape[0])
    if len(boxes) and ((boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] <= boxes[:, 2]) | (boxes[:, 0] < 1)).any():
        bad = boxes[(boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] <= boxes[:, 2]) | (boxes[:, 0] < 1)][0].tolist()
        raise ValueError(f"box [class, x0, y0, x1, y1] = {bad} has no area or a class below 1")
    return boxes


def best_box_fit(candidates: Candidates, boxes) -> np.ndarray:
    """(N,) float64: for each box the highest box IoU any candidate reaches (how well the candidates can fit it)."""
    boxes = _check_boxes(boxes, candidates.shape)
    if len(boxes) == 0 or len(candidates) == 0:
        return np.zeros(len(boxes))
    return box_iou(boxes[:, 1:], candidates.boxes).max(1)


def initial_selection(candidates: Candidates, boxes, *, tie_tolerance: float = 0.05,
                      min_fit: float = 0.0) -> np.ndarray:
    """(N,) int64: for each box (N, 5) ``[class, x0, y0, x1, y1]`` the candidate whose box matches it best; among
    candidates within ``tie_tolerance`` of the best box IoU, the largest (then the lowest index). A box whose best
    box IoU is below ``min_fit`` gets ``NO_CANDIDATE`` (-1): no candidate fits it (see :func:`labels_from_selection`)."""
    boxes = _check_boxes(boxes, candidates.shape)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if len(candidates) == 0:
        raise ValueError("no candidates to select from")
    iou = box_iou(boxes[:, 1:], candidates.boxes)
    best = iou.max(1, keepdims=True)
    near = iou >= best - tie_tolerance - 1e-12
    selection = np.where(near, candidates.areas[None, :], -1).argmax(1).astype(np.int64)
    return np.where(best[:, 0] < min_fit, NO_CANDIDATE, selection)


def labels_from_selection(candidates: Candidates, boxes, selection, *, clip_to_box: bool = True,
                          poor_fit: str = "fill", box_rest: str = "background") -> np.ndarray:
    """(H, W) uint8 labels: selected candidate ``selection[i]`` takes the class of box ``i`` (rules: module doc).

    ``selection[i] == NO_CANDIDATE`` (-1): box ``i`` is painted whole with its class (``poor_fit="fill"``, as box
    fill) or left 255 (``"ignore"``). ``box_rest="ignore"``: pixels inside some box but in no selected candidate (nor
    filled box) are 255 instead of background."""
    boxes = _check_boxes(boxes, candidates.shape)
    selection = np.asarray(selection, np.int64).reshape(-1)
    if len(selection) != len(boxes):
        raise ValueError(f"{len(selection)} selected candidates for {len(boxes)} boxes")
    if poor_fit not in POOR_FIT or box_rest not in BOX_REST:
        raise ValueError(f"poor_fit must be one of {POOR_FIT} and box_rest one of {BOX_REST}")
    h, w = candidates.shape
    out = np.full((h, w), BACKGROUND, np.uint8)
    if box_rest == "ignore":
        for _, x0, y0, x1, y1 in boxes.tolist():
            out[y0:y1, x0:x1] = IGNORE
    painted = []  # (area, box index, full-size mask or None for a whole box)
    for i, ((_, x0, y0, x1, y1), m) in enumerate(zip(boxes.tolist(), selection.tolist())):
        if m == NO_CANDIDATE:
            if poor_fit == "ignore":
                out[y0:y1, x0:x1] = IGNORE
                continue
            painted.append(((x1 - x0) * (y1 - y0), i, None))
            continue
        mask = candidates.mask(m)
        if clip_to_box:
            clipped = np.zeros_like(mask)
            clipped[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
            mask = clipped
        painted.append((int(mask.sum()), i, mask))
    for _, i, mask in sorted(painted, key=lambda t: -t[0]):  # stable: equal areas -> later box on top
        cls, x0, y0, x1, y1 = boxes[i].tolist()
        if mask is None:
            out[y0:y1, x0:x1] = cls
        else:
            out[mask] = cls
    return out


def candidate_costs(candidates: Candidates, box, probs: np.ndarray, *, lam: float = 1.0,
                    clip_to_box: bool = True, balanced: bool = False, agnostic: bool = False) -> np.ndarray:
    """(M,) BoxSup cost of every candidate for one ``box`` ``[class, x0, y0, x1, y1]`` given ``probs`` (K, H, W).

    ``probs`` holds class probabilities (softmax) for every class id ``0..K-1`` at the image's size. ``balanced``
    (not in the paper) replaces the mean cross-entropy over all pixels by the mean of the foreground pixels' and
    the background pixels' mean cross-entropies, so a network that leans to background does not simply favour the
    smallest candidates; a candidate with no pixel in the box then costs the largest cross-entropy (-log 1e-6).
    ``agnostic`` (not in the paper): a candidate pixel costs ``-log(1 - p_0)`` (object, whatever its class) instead
    of ``-log p_c``: the box already gives the class, the network only has to tell object from background.
    """
    cls, x0, y0, x1, y1 = (int(v) for v in _check_boxes(np.asarray(box).reshape(-1)[:5], candidates.shape)[0])
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != candidates.shape:
        raise ValueError(f"probs {probs.shape} do not match the candidates' image {candidates.shape}")
    if not 0 < cls < probs.shape[0]:
        raise ValueError(f"box class {cls} outside the {probs.shape[0]} classes of probs")
    iou = box_iou(np.array([[x0, y0, x1, y1]]), candidates.boxes)[0]
    if lam == 0:
        return 1.0 - iou
    nlp_fg = -np.log(np.clip(1.0 - probs[BACKGROUND] if agnostic else probs[cls], PROB_FLOOR, 1.0))
    nlp_bg = -np.log(np.clip(probs[BACKGROUND], PROB_FLOOR, 1.0))
    window = (x0, y0, x1, y1)
    bg_in = candidates.candidate_sums(candidates.leaf_sums(nlp_bg, window))  # candidate pixels inside the box
    box_bg = float(nlp_bg[y0:y1, x0:x1].sum())
    if clip_to_box:
        fg = candidates.candidate_sums(candidates.leaf_sums(nlp_fg, window))
        count = np.full(len(candidates), float((x1 - x0) * (y1 - y0)))
    else:
        fg = candidates.candidate_sums(candidates.leaf_sums(nlp_fg))
        inside = candidates.candidate_sums(candidates.leaf_sums(np.ones(candidates.shape), window))
        count = (x1 - x0) * (y1 - y0) + candidates.areas - inside
    if balanced:
        inside = candidates.candidate_sums(candidates.leaf_sums(np.ones(candidates.shape), window))
        n_fg = inside if clip_to_box else candidates.areas.astype(np.float64)
        n_bg = (x1 - x0) * (y1 - y0) - inside
        worst = -np.log(PROB_FLOOR)
        fg_mean = np.where(n_fg > 0, fg / np.maximum(n_fg, 1.0), worst)
        bg_mean = np.where(n_bg > 0, (box_bg - bg_in) / np.maximum(n_bg, 1.0), 0.0)
        ce = 0.5 * (fg_mean + bg_mean)
    else:
        ce = (fg + box_bg - bg_in) / np.maximum(count, 1.0)
    return (1.0 - iou) + lam * ce


def select_candidates(costs: np.ndarray, top_k: int, rng: np.random.Generator) -> int:
    """Index of a candidate drawn uniformly among the ``top_k`` lowest ``costs`` (ties: lower index first)."""
    costs = np.asarray(costs, np.float64).reshape(-1)
    if costs.size == 0:
        raise ValueError("no candidates to select from")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    order = np.argsort(costs, kind="stable")[:top_k]
    return int(order[rng.integers(len(order))]) if len(order) > 1 else int(order[0])


def update_selection(candidates: Candidates, boxes, probs: np.ndarray, *, lam: float = 1.0, top_k: int = 5,
                     rng: np.random.Generator, clip_to_box: bool = True, balanced: bool = False,
                     min_fit: float = 0.0, previous=None, margin: float = 0.0,
                     agnostic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One BoxSup update for every box: ``(selection (N,) int64, chosen costs (N,) float64)``. A box that no
    candidate fits (best box IoU below ``min_fit``) keeps ``NO_CANDIDATE`` (cost NaN), as in the initial selection.

    ``previous`` (N,) with ``margin`` > 0 (not in the paper): a box keeps its previous candidate unless the drawn one
    costs at least ``margin`` less, so a network whose cross-entropies barely differ between candidates cannot
    move the labels."""
    boxes = _check_boxes(boxes, candidates.shape)
    fit = best_box_fit(candidates, boxes)
    if previous is not None:
        previous = np.asarray(previous, np.int64).reshape(-1)
        if len(previous) != len(boxes):
            raise ValueError(f"{len(previous)} previous selections for {len(boxes)} boxes")
    selection = np.full(len(boxes), NO_CANDIDATE, np.int64)
    chosen = np.full(len(boxes), np.nan)
    for i, box in enumerate(boxes):
        if fit[i] < min_fit:
            continue
        costs = candidate_costs(candidates, box, probs, lam=lam, clip_to_box=clip_to_box, balanced=balanced,
                                agnostic=agnostic)
        selection[i] = select_candidates(costs, top_k, rng)
        if previous is not None and previous[i] != NO_CANDIDATE and margin > 0 \
                and costs[selection[i]] > costs[previous[i]] - margin:
            selection[i] = previous[i]
        chosen[i] = costs[selection[i]]
    return selection, chosen


def agreement_kappa(confusion) -> float:
    """Cohen's kappa of a confusion matrix (rows: the labels a network was trained on, columns: its arg-max; a
    trailing 255 column is ignored): 0 for a network that agrees with its labels no better than chance (e.g. one
    that predicts background everywhere), 1 for full agreement; negative values are returned as they are."""
    c = np.asarray(confusion, np.float64)
    c = c[:, :c.shape[0]]
    n = c.sum()
    if n == 0:
        return 0.0
    po = np.trace(c) / n
    pe = float((c.sum(1) / n * c.sum(0) / n).sum())
    return float((po - pe) / (1 - pe)) if pe < 1 else 0.0


def image_rng(seed: int, round_index: int, image_id: str) -> np.random.Generator:
    """A generator seeded by (seed, round, image id): the same draw whatever the order or process of the images."""
    import zlib

    return np.random.default_rng([int(seed), int(round_index), zlib.crc32(image_id.encode())])
