"""The guide labeller: class identity from seeds (CAMs), object extent from saliency (Oh et al., CVPR 2017).

Inputs are arrays: a saliency map (H, W) in [0, 1], and class evidence ``cams`` (K, H, W) with their dataset class
ids (K,). Class evidence is either normalised CAMs (the ``cam`` seed stage's ``scores/``) or, for a seed stage that
keeps only masks, :func:`scores_from_seed_mask` (1 on a class's seed pixels, small values decaying with the distance
to them elsewhere, so that "arg-max" means "nearest seed"). Each map is divided by its own maximum first, so thresholds are fractions of a
class's peak (SEC / DSRG convention).

Rules of :func:`guide_labels` (the ``saliency`` guide)
-----------------------------------------------------
1. **Seeds**: a pixel is a seed of class ``c`` when ``c`` has the largest map there and that value is
   >= ``seed_threshold`` (default 0.2: SEC's and DSRG's "20 % of the class maximum" localisation cues).
2. **Salient regions**: pixels with saliency >= ``saliency_threshold`` (default 0.5), split into 8-connected
   components.
3. A region **overlapping seeds** takes their class. The classes a region overlaps are those holding at least
   ``min_seed_share`` (default 0.1) of the region's seed pixels, so a few stray seed pixels do not split a region.
4. A region overlapping seeds of **several classes is split by per-pixel CAM arg-max** among those classes (with
   mask-only seeds this is the nearest seed).
5. A salient region **without seeds** is 255 (unsure: an object of no known class, or a salient background thing);
   with ``fill_single_tag`` an image with exactly one tag gives that tag to such regions instead (its class
   identity needs no seed).
6. **Non-salient pixels** are background (0) unless a confident seed says otherwise: a class map >=
   ``confident_threshold`` (default 0.8) there gives that class. Before a dense CRF a low value pays: the
   ``voc_guided`` recipe uses 0.15 on walked CAMs (the CRF trims what the maps overreach; the saliency net alone
   misses indoor objects), chosen on voc-dev train[1::4] (bench/RESULTS.md, issue 17).
7. An image without tags is all background.
8. With ``unclaimed_threshold`` (off by default): a tag that rules 3-6 gave no pixel (its object was not salient,
   or its seeds were outvoted in every region) takes the pixels labelled 0 or 255 where its map is the arg-max and
   >= ``unclaimed_threshold``: for that tag the dense CAM map stands in for the saliency it did not get.

Baselines in the same terms
---------------------------
* :func:`dense_cam_labels` (the ``cam`` guide, seeds alone): arg-max over ``[background_threshold, maps...]``; the
  dense CAM label map of IRN (Ahn et al., CVPR 2019) with its ``cam_eval_thres`` 0.15 as default.
* :func:`saliency_only_labels` (the ``saliency-only`` guide): salient pixels take the image's top-scoring tag, the
  tag whose map has the largest mean over the image (for a GAP classifier the un-normalised CAM mean is the class
  logit); the rest is background.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..conventions import BACKGROUND, IGNORE


def _check(saliency: np.ndarray | None, cams: np.ndarray, class_ids) -> tuple[np.ndarray, np.ndarray]:
    cams = np.asarray(cams, np.float32)
    class_ids = np.asarray(class_ids, np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != class_ids.size:
        raise ValueError(f"cams {cams.shape} do not match {class_ids.size} class ids")
    if saliency is not None and np.shape(saliency) != cams.shape[1:]:
        raise ValueError(f"saliency {np.shape(saliency)} and cams {cams.shape[1:]} differ in size; resize first")
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() > 254):
        raise ValueError(f"class ids {class_ids.tolist()} outside 0..254")
    return cams, class_ids


def select_classes(cams: np.ndarray, class_ids, image_labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the maps of foreground classes (background 0 dropped) that are among ``image_labels`` (if given),
    each divided by its own maximum."""
    cams, class_ids = _check(None, cams, class_ids)
    keep = class_ids != BACKGROUND
    if image_labels is not None:
        keep &= np.isin(class_ids, np.asarray(sorted({int(c) for c in image_labels}), np.int64))
    cams, class_ids = cams[keep], class_ids[keep]
    if cams.size:
        peak = cams.reshape(len(cams), -1).max(axis=1)
        cams = cams / np.maximum(peak, 1e-6)[:, None, None]
    return cams.astype(np.float32), class_ids


def scores_from_seed_mask(mask: np.ndarray, image_labels=None, *, decay: float = 16.0) -> tuple[np.ndarray, np.ndarray]:
    """Class evidence from a seed mask: 1 on the class's seed pixels, ``0.1 * exp(-d / decay)`` elsewhere with
    ``d`` the distance (pixels) to its nearest seed pixel, so that only seed pixels pass the seed and confident
    thresholds (>= 0.1) and arg-max elsewhere is the nearest seed. Classes: those in the mask (and in
    ``image_labels`` when given)."""
    mask = np.asarray(mask)
    present = sorted(int(c) for c in np.unique(mask) if c not in (BACKGROUND, IGNORE))
    if image_labels is not None:
        tags = {int(c) for c in image_labels}
        present = [c for c in present if c in tags]
    maps = []
    for c in present:
        dist = cv2.distanceTransform((mask != c).astype(np.uint8), cv2.DIST_L2, 5)
        maps.append(np.where(dist == 0, 1.0, 0.1 * np.exp(-dist / decay)))
    h, w = mask.shape
    return (np.stack(maps).astype(np.float32) if maps else np.zeros((0, h, w), np.float32),
            np.asarray(present, np.int64))


def guide_labels(saliency: np.ndarray, cams: np.ndarray, class_ids, image_labels=None, *,
                 saliency_threshold: float = 0.5, seed_threshold: float = 0.2, confident_threshold: float = 0.8,
                 min_seed_share: float = 0.1, fill_single_tag: bool = False,
                 unclaimed_threshold: float | None = None) -> np.ndarray:
    """Pseudo mask (H, W) uint8 in {0, classes, 255} from saliency + class evidence (rules: module docstring).

    Parameters
    ----------
    saliency : (H, W) float in [0, 1]
    cams : (K, H, W) float, class evidence (CAMs) for ``class_ids`` (K,) dataset class ids
    image_labels : iterable of int or None
        The image's tags; maps of other classes are dropped. ``None`` keeps every map. No tags -> all background.
    """
    cams, class_ids = _check(saliency, cams, class_ids)
    h, w = cams.shape[1:]
    if image_labels is not None and not list(image_labels):
        return np.zeros((h, w), np.uint8)
    cams, class_ids = select_classes(cams, class_ids, image_labels)
    salient = np.asarray(saliency) >= saliency_threshold
    out = np.zeros((h, w), np.uint8)
    if class_ids.size == 0:
        out[salient] = IGNORE
        return _fill_single_tag(out, salient, image_labels) if fill_single_tag else out
    best = cams.argmax(axis=0)
    peak = np.take_along_axis(cams, best[None], axis=0)[0]
    seed = peak >= seed_threshold
    n_regions, regions = cv2.connectedComponents(salient.astype(np.uint8), connectivity=8)
    k = class_ids.size
    # seed-pixel counts per (region, class) in one bincount
    counts = np.bincount(regions[seed] * k + best[seed], minlength=n_regions * k).reshape(n_regions, k)
    totals = counts.sum(axis=1, keepdims=True)
    member = (counts > 0) & (counts >= min_seed_share * np.maximum(totals, 1))
    member[0] = False  # component 0 is the non-salient part
    # per pixel: arg-max among the classes its region overlaps (-inf for the others)
    allowed = member[regions]  # (H, W, K)
    masked = np.where(allowed, np.moveaxis(cams, 0, -1), -np.inf)
    choice = masked.argmax(axis=-1)
    has_class = allowed.any(axis=-1)
    lut = class_ids.astype(np.uint8)
    out[salient] = np.where(has_class[salient], lut[choice[salient]], IGNORE)
    confident = ~salient & (peak >= confident_threshold)
    out[confident] = lut[best[confident]]
    if fill_single_tag:
        out = _fill_single_tag(out, salient, image_labels)
    if unclaimed_threshold is not None:
        unclaimed = np.flatnonzero(~np.isin(class_ids, out))
        free = ((out == BACKGROUND) | (out == IGNORE)) & np.isin(best, unclaimed) & (peak >= unclaimed_threshold)
        out[free] = lut[best[free]]
    return out


def _fill_single_tag(out: np.ndarray, salient: np.ndarray, image_labels) -> np.ndarray:
    tags = sorted({int(c) for c in image_labels}) if image_labels is not None else []
    if len(tags) == 1:
        out[salient & (out == IGNORE)] = tags[0]
    return out


def dense_cam_labels(cams: np.ndarray, class_ids, image_labels=None, *, background_threshold: float = 0.15) -> np.ndarray:
    """Dense CAM label map (H, W) uint8: the class with the largest map where it exceeds ``background_threshold``,
    else 0."""
    cams, class_ids = _check(None, cams, class_ids)
    h, w = cams.shape[1:]
    cams, class_ids = select_classes(cams, class_ids, image_labels)
    if class_ids.size == 0:
        return np.zeros((h, w), np.uint8)
    best = cams.argmax(axis=0)
    peak = np.take_along_axis(cams, best[None], axis=0)[0]
    return np.where(peak > background_threshold, class_ids.astype(np.uint8)[best], BACKGROUND).astype(np.uint8)


def top_tag(cams: np.ndarray, class_ids, image_labels=None) -> int | None:
    """The tag whose (normalised) map has the largest mean over the image; a single tag wins without maps; None
    when it cannot be told (several tags and no maps, or no tag)."""
    tags = sorted({int(c) for c in image_labels}) if image_labels is not None else None
    cams, class_ids = select_classes(cams, class_ids, tags)
    if class_ids.size:
        return int(class_ids[int(cams.reshape(len(cams), -1).mean(axis=1).argmax())])
    if tags is not None and len(tags) == 1:
        return tags[0]
    return None


def saliency_only_labels(saliency: np.ndarray, cams: np.ndarray, class_ids, image_labels=None, *,
                         saliency_threshold: float = 0.5) -> np.ndarray:
    """Saliency-only pseudo mask (H, W) uint8: salient pixels -> :func:`top_tag` (255 when it cannot be told),
    the rest 0; no tags -> all 0."""
    cams, class_ids = _check(saliency, cams, class_ids)
    h, w = np.shape(saliency)
    if image_labels is not None and not list(image_labels):
        return np.zeros((h, w), np.uint8)
    tag = top_tag(cams, class_ids, image_labels)
    if tag is None:  # several tags and no evidence to choose: salient pixels are unsure
        tag = IGNORE
    return np.where(np.asarray(saliency) >= saliency_threshold, tag, BACKGROUND).astype(np.uint8)
