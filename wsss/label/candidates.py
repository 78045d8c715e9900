"""Candidate masks by selective-search-style hierarchical grouping of superpixels (Uijlings et al., IJCV 2013).

For each *strategy* (a colour space and a Felzenszwalb scale) the image is over-segmented with scikit-image's
:func:`~skimage.segmentation.felzenszwalb` into *leaves*; adjacent regions are then merged greedily, most similar
pair first, until one region is left. Every leaf and every merged region is a candidate mask, so one strategy with
``L`` connected leaves gives ``2L - 1`` candidates. Similarity of two regions ``a, b`` (each term in [0, 1]):

* colour: histogram intersection of 25-bin per-channel colour histograms (L1-normalised);
* texture: histogram intersection of gradient histograms (8 orientations x 10 magnitude bins per channel);
* size: ``1 - (|a| + |b|) / |image|`` (merge small regions first);
* fill: ``1 - (|bbox(a u b)| - |a| - |b|) / |image|`` (merge regions that fill each other's gaps).

The merged region's histograms are the size-weighted means of its parts, as in selective search.

Representation (:class:`Candidates`): candidates are never stored as (M, H, W) masks. Each strategy keeps a leaf map
(its superpixel labels, with leaf ids global over strategies) and each candidate is a set of leaves: a boolean
``members`` matrix (M, L). A candidate's mask is ``members[m][leaf_maps[strategy[m]]]``; statistics over masks
(areas, intersections with a GT mask, sums of per-pixel costs) are per-leaf ``bincount`` sums multiplied by
``members``, so nothing loops over pixels in Python. :meth:`Candidates.to_arrays` / :meth:`Candidates.from_arrays`
give plain arrays for an ``.npz`` (membership bit-packed).

Speed: the over-segmentation runs on a copy scaled so that its longer side is at most ``max_side`` pixels; the leaf
map is brought back to full size with nearest-neighbour interpolation (every leaf survives an upscale).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

COLOUR_SPACES = ("hsv", "lab", "rgb")
COLOUR_BINS = 25
ORIENTATIONS = 8
MAGNITUDE_BINS = 10


# ------------------------------------------------------------------------------------------ representation
@dataclass
class Candidates:
    """Candidate masks of one image.

    Attributes
    ----------
    leaf_maps : (S, H, W) int32
        One superpixel map per strategy; leaf ids are global (``0..L-1``) over all strategies.
    members : (M, L) bool
        ``members[m, l]``: leaf ``l`` belongs to candidate ``m`` (only leaves of the candidate's strategy).
    strategy : (M,) int16
        Which leaf map candidate ``m`` is made of.
    boxes : (M, 4) int64
        Tight bounding boxes ``[x0, y0, x1, y1]`` (x1/y1 exclusive).
    areas : (M,) int64
        Pixel counts.
    """

    leaf_maps: np.ndarray
    members: np.ndarray
    strategy: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return int(self.members.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.leaf_maps.shape[1:])

    @property
    def num_leaves(self) -> int:
        return int(self.members.shape[1])

    def mask(self, index: int) -> np.ndarray:
        """Candidate ``index`` as an (H, W) bool mask."""
        return self.members[index][self.leaf_maps[self.strategy[index]]]

    def masks(self, indices=None) -> np.ndarray:
        """(len(indices), H, W) bool masks (all candidates when ``indices`` is None; mind the memory)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
        out = np.zeros((len(idx), *self.shape), bool)
        for k, m in enumerate(idx):
            out[k] = self.mask(int(m))
        return out

    def leaf_sums(self, values: np.ndarray, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Per-leaf sums of an (H, W) array (restricted to ``window`` = x0, y0, x1, y1 when given): (L,) float64.

        Every leaf lies in one strategy, so summing the per-strategy ``bincount`` gives each leaf its own sum.
        """
        maps = self.leaf_maps
        if window is not None:
            x0, y0, x1, y1 = (int(v) for v in window)
            maps = maps[:, y0:y1, x0:x1]
            values = values[y0:y1, x0:x1]
        weights = np.broadcast_to(np.asarray(values, np.float64), maps.shape)
        return np.bincount(maps.reshape(-1), weights=weights.reshape(-1), minlength=self.num_leaves)

    def candidate_sums(self, leaf_values: np.ndarray) -> np.ndarray:
        """(M,) sums over each candidate's leaves of a per-leaf (L,) array."""
        return self.members.astype(np.float64) @ np.asarray(leaf_values, np.float64)

    def mask_ious(self, target: np.ndarray) -> np.ndarray:
        """(M,) IoU of every candidate mask with an (H, W) bool ``target`` mask."""
        target = np.asarray(target, bool)
        inter = self.candidate_sums(self.leaf_sums(target))
        union = self.areas + target.sum() - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    # -------------------------------------------------------------------------------------- arrays
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays for ``np.savez_compressed`` (no objects, loadable with ``allow_pickle=False``)."""
        dtype = np.uint16 if self.num_leaves <= np.iinfo(np.uint16).max + 1 else np.int32
        return {
            "leaf_maps": self.leaf_maps.astype(dtype),
            "members_packed": np.packbits(self.members, axis=1),
            "num_leaves": np.asarray(self.num_leaves, np.int64),
            "strategy": self.strategy.astype(np.int16),
            "boxes": self.boxes.astype(np.int32),
            "areas": self.areas.astype(np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays) -> "Candidates":
        """Inverse of :meth:`to_arrays`; raises ``KeyError`` / ``ValueError`` on arrays that do not fit together."""
        num_leaves = int(arrays["num_leaves"])
        members = np.unpackbits(np.asarray(arrays["members_packed"], np.uint8), axis=1, count=num_leaves)
        members = members.astype(bool)
        leaf_maps = np.asarray(arrays["leaf_maps"]).astype(np.int32)
        strategy = np.asarray(arrays["strategy"]).astype(np.int16)
        boxes = np.asarray(arrays["boxes"]).astype(np.int64).reshape(-1, 4)
        areas = np.asarray(arrays["areas"]).astype(np.int64)
        m = members.shape[0]
        if leaf_maps.ndim != 3 or strategy.shape != (m,) or boxes.shape != (m, 4) or areas.shape != (m,):
            raise ValueError(f"candidate arrays do not fit: leaf_maps {leaf_maps.shape}, members {members.shape}, "
                             f"strategy {strategy.shape}, boxes {boxes.shape}, areas {areas.shape}")
        if leaf_maps.size and (leaf_maps.max() >= num_leaves or leaf_maps.min() < 0):
            raise ValueError(f"leaf map ids outside 0..{num_leaves - 1}")
        if m and (strategy.min() < 0 or strategy.max() >= leaf_maps.shape[0]):
            raise ValueError("candidate strategy index outside the leaf maps")
        return cls(leaf_maps, members, strategy, boxes, areas)


# ---------------------------------------------------------------------------------------------- features
def convert_colour(image: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 in ``space`` (OpenCV's 8-bit scaling; HSV hue over 0..255)."""
    import cv2

    if space == "rgb":
        return np.ascontiguousarray(image)
    if space == "hsv":
        return cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
    if space == "lab":
        return cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    raise ValueError(f"unknown colour space {space!r}; choose one of {', '.join(COLOUR_SPACES)}")


def _histograms(labels: np.ndarray, bins: np.ndarray, n_regions: int, n_bins: int) -> np.ndarray:
    """(n_regions, n_bins) L1-normalised histograms of integer ``bins`` (H, W, C) per region label (H, W)."""
    h = np.zeros((n_regions, n_bins), np.float64)
    flat_labels = labels.reshape(-1)
    for c in range(bins.shape[2]):  # a few channels, each a vectorised bincount
        idx = flat_labels * n_bins + bins[..., c].reshape(-1)
        h += np.bincount(idx, minlength=n_regions * n_bins).reshape(n_regions, n_bins)
    return h / np.maximum(h.sum(1, keepdims=True), 1)


def region_features(image: np.ndarray, labels: np.ndarray, n_regions: int) -> dict[str, np.ndarray]:
    """Colour / texture histograms, sizes and boxes of the regions of ``labels`` (H, W) in ``image`` (H, W, 3).

    Returns ``colour`` (n, 3 * 25), ``texture`` (n, 3 * 8 * 10), ``size`` (n,), ``box`` (n, 4) x0, y0, x1, y1.
    """
    import cv2

    img = image.astype(np.float32)
    colour_bins = np.minimum((image.astype(np.int64) * COLOUR_BINS) // 256, COLOUR_BINS - 1)
    colour = np.zeros((n_regions, 3 * COLOUR_BINS))
    tex_bins_all = ORIENTATIONS * MAGNITUDE_BINS
    texture = np.zeros((n_regions, 3 * tex_bins_all))
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    orient = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi) * ORIENTATIONS
    orient_bin = np.minimum(orient.astype(np.int64), ORIENTATIONS - 1)
    scale = max(float(np.percentile(mag, 99)), 1e-6)
    mag_bin = np.minimum((mag / scale * MAGNITUDE_BINS).astype(np.int64), MAGNITUDE_BINS - 1)
    tex_bins = orient_bin * MAGNITUDE_BINS + mag_bin
    for c in range(3):
        colour[:, c * COLOUR_BINS:(c + 1) * COLOUR_BINS] = _histograms(labels, colour_bins[..., c:c + 1],
                                                                       n_regions, COLOUR_BINS)
        texture[:, c * tex_bins_all:(c + 1) * tex_bins_all] = _histograms(labels, tex_bins[..., c:c + 1],
                                                                          n_regions, tex_bins_all)
    colour /= 3.0
    texture /= 3.0
    return {"colour": colour, "texture": texture, "size": np.bincount(labels.reshape(-1), minlength=n_regions)
            .astype(np.float64), "box": leaf_boxes(labels, n_regions)}


def leaf_boxes(labels: np.ndarray, n_regions: int) -> np.ndarray:
    """(n, 4) int64 tight boxes ``[x0, y0, x1, y1]`` (exclusive) of every label 0..n-1 of ``labels`` (H, W)."""
    from scipy import ndimage

    out = np.zeros((n_regions, 4), np.int64)
    for k, sl in enumerate(ndimage.find_objects(labels + 1, max_label=n_regions)):
        if sl is not None:
            out[k] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return out


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """(E, 2) int64 unique pairs ``a < b`` of 4-connected neighbouring labels."""
    a = np.concatenate([labels[:, :-1].reshape(-1), labels[:-1, :].reshape(-1)])
    b = np.concatenate([labels[:, 1:].reshape(-1), labels[1:, :].reshape(-1)])
    diff = a != b
    lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
    n = int(labels.max()) + 1
    keys = np.unique(lo.astype(np.int64) * n + hi)
    return np.stack([keys // n, keys % n], axis=1)


# ----------------------------------------------------------------------------------------------- grouping
SIMILARITIES = ("colour", "texture", "size", "fill")


def hierarchical_grouping(features: dict[str, np.ndarray], pairs: np.ndarray, image_size: int,
                          similarities: tuple[str, ...] = SIMILARITIES) -> np.ndarray:
    """Greedy selective-search merging of regions; returns the merges as (R, 2) int64 region ids.

    Regions ``0..n-1`` are the leaves; merge ``r`` joins regions ``merges[r]`` into region ``n + r``. Regions that
    touch no other region are never merged. ``similarities`` picks the terms summed into the pair similarity.
    """
    n = len(features["size"])
    unknown = set(similarities) - set(SIMILARITIES)
    if unknown or not similarities:
        raise ValueError(f"similarities {similarities}: choose from {', '.join(SIMILARITIES)}")
    cap = 2 * n
    colour = np.zeros((cap, features["colour"].shape[1]))
    texture = np.zeros((cap, features["texture"].shape[1]))
    size = np.zeros(cap)
    box = np.zeros((cap, 4), np.int64)
    colour[:n], texture[:n], size[:n], box[:n] = (features["colour"], features["texture"], features["size"],
                                                  features["box"])
    neighbours: list[set[int]] = [set() for _ in range(cap)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    alive = np.zeros(cap, bool)
    alive[:n] = True
    use = set(similarities)

    def similarity(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Similarities of the region pairs (i[k], j[k]) (index arrays of equal length, or i a scalar)."""
        s = np.zeros(len(j))
        if "colour" in use:
            s += np.minimum(colour[i], colour[j]).sum(-1)
        if "texture" in use:
            s += np.minimum(texture[i], texture[j]).sum(-1)
        if "size" in use:
            s += 1.0 - (size[i] + size[j]) / image_size
        if "fill" in use:
            bw = np.maximum(box[i, 2], box[j, 2]) - np.minimum(box[i, 0], box[j, 0])
            bh = np.maximum(box[i, 3], box[j, 3]) - np.minimum(box[i, 1], box[j, 1])
            s += 1.0 - (bw * bh - size[i] - size[j]) / image_size
        return s

    heap: list[tuple[float, int, int]] = []
    if len(pairs):  # every leaf pair at once
        heap = [(-v, a, b) for v, a, b in zip(similarity(pairs[:, 0], pairs[:, 1]).tolist(), pairs[:, 0].tolist(),
                                              pairs[:, 1].tolist())]
        heapq.heapify(heap)
    merges = []
    nxt = n
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # a stale entry: one side was merged already
        t = nxt
        nxt += 1
        sa, sb = size[a], size[b]
        size[t] = sa + sb
        colour[t] = (colour[a] * sa + colour[b] * sb) / size[t]
        texture[t] = (texture[a] * sa + texture[b] * sb) / size[t]
        box[t] = (min(box[a, 0], box[b, 0]), min(box[a, 1], box[b, 1]), max(box[a, 2], box[b, 2]),
                  max(box[a, 3], box[b, 3]))
        alive[a] = alive[b] = False
        alive[t] = True
        nb = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours[t] = nb
        for k in nb:
            neighbours[k].discard(a)
            neighbours[k].discard(b)
            neighbours[k].add(t)
        neighbours[a] = neighbours[b] = set()
        merges.append((a, b))
        if nb:
            js = np.fromiter(nb, np.int64, len(nb))
            for v, k in zip(similarity(t, js).tolist(), js.tolist()):
                heapq.heappush(heap, (-v, t, k))
    return np.asarray(merges, np.int64).reshape(-1, 2)


def membership_from_merges(n_leaves: int, merges: np.ndarray) -> np.ndarray:
    """(n_leaves + R, n_leaves) bool: the leaves of every region (leaves first, then one row per merge)."""
    members = np.zeros((n_leaves + len(merges), n_leaves), bool)
    members[np.arange(n_leaves), np.arange(n_leaves)] = True
    for r, (a, b) in enumerate(merges.tolist()):
        members[n_leaves + r] = members[a] | members[b]
    return members


def oversegment(image: np.ndarray, *, colour_space: str, scale: float, sigma: float = 0.8,
                min_size: int | None = None) -> np.ndarray:
    """Felzenszwalb superpixels of ``image`` (H, W, 3) uint8 RGB in ``colour_space``: (H, W) int32 labels 0..n-1."""
    from skimage.segmentation import felzenszwalb

    converted = convert_colour(image, colour_space)
    labels = felzenszwalb(converted, scale=scale, sigma=sigma,
                          min_size=int(min_size if min_size is not None else scale), channel_axis=-1)
    _, labels = np.unique(labels, return_inverse=True)  # compact ids
    return labels.reshape(image.shape[:2]).astype(np.int32)


def generate_candidates(image: np.ndarray, *, colour_spaces: tuple[str, ...] = ("hsv", "lab"),
                        scales: tuple[float, ...] = (100.0, 300.0), sigma: float = 0.8, max_side: int = 256,
                        min_area: float = 0.0005, similarities: tuple[str, ...] = SIMILARITIES) -> Candidates:
    """Candidate masks of ``image`` (H, W, 3) uint8 RGB, one strategy per (colour space, scale) pair.

    Parameters
    ----------
    colour_spaces : colour spaces to over-segment and describe regions in (``hsv``, ``lab``, ``rgb``).
    scales : Felzenszwalb ``scale`` values (bigger = fewer, larger superpixels); ``min_size`` = scale / 4 pixels
        of the scaled image.
    sigma : Felzenszwalb's pre-smoothing.
    max_side : the over-segmentation and grouping run on a copy whose longer side is at most this (0 = full size).
    min_area : candidates smaller than this fraction of the image are dropped (leaves stay in the leaf maps).
    similarities : terms of the grouping similarity (see the module doc).

    Returns
    -------
    Candidates with ``M`` masks; duplicates (same box and area in another strategy) are dropped.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if not colour_spaces or not scales:
        raise ValueError("give at least one colour space and one scale")
    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w)) if max_side else 1.0
    small = image if factor >= 1.0 else cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                                                   interpolation=cv2.INTER_AREA)
    leaf_maps, member_blocks, strategies = [], [], []
    offset = 0
    for s, (space, scale) in enumerate((cs, sc) for cs in colour_spaces for sc in scales):
        labels = oversegment(small, colour_space=space, scale=scale, sigma=sigma, min_size=max(2, int(scale / 4)))
        n = int(labels.max()) + 1
        converted = convert_colour(small, space)
        feats = region_features(converted, labels, n)
        merges = hierarchical_grouping(feats, adjacent_pairs(labels), labels.size, similarities)
        members = membership_from_merges(n, merges)
        full = labels if factor >= 1.0 else cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        leaf_maps.append(full + offset)
        member_blocks.append((offset, members))
        strategies.append(np.full(len(members), s, np.int16))
        offset += n
    total = offset
    members = np.zeros((sum(len(m) for _, m in member_blocks), total), bool)
    row = 0
    for off, block in member_blocks:
        members[row:row + len(block), off:off + block.shape[1]] = block
        row += len(block)
    maps = np.stack(leaf_maps).astype(np.int32)
    strategy = np.concatenate(strategies)
    leaf_area = np.bincount(maps.reshape(-1), minlength=total).astype(np.int64)
    areas = (members.astype(np.int64) @ leaf_area)
    lb = np.zeros((total, 4), np.int64)
    for leaf_map in maps:  # each map holds its own strategy's ids only
        b = leaf_boxes(leaf_map, total)
        present = np.bincount(leaf_map.reshape(-1), minlength=total) > 0
        lb[present] = b[present]
    big = np.iinfo(np.int64).max
    boxes = np.stack([np.where(members, lb[None, :, 0], big).min(1), np.where(members, lb[None, :, 1], big).min(1),
                      np.where(members, lb[None, :, 2], -1).max(1), np.where(members, lb[None, :, 3], -1).max(1)], 1)
    keep = areas >= min_area * h * w
    # drop duplicates over strategies (same tight box and area: the whole image, single big leaves)
    key = np.concatenate([boxes, areas[:, None]], 1)
    _, first = np.unique(key, axis=0, return_index=True)
    unique = np.zeros(len(key), bool)
    unique[first] = True
    keep &= unique
    return Candidates(maps, members[keep], strategy[keep], boxes[keep], areas[keep])


def candidates_from_masks(masks) -> Candidates:
    """Candidates from explicit (M, H, W) bool masks (each its own two-leaf strategy: outside, inside).

    For hand-made candidate sets (tests, external proposals); memory is M leaf maps, so keep M small.
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (M, H, W), got {masks.shape}")
    m = masks.shape[0]
    leaf_maps = (2 * np.arange(m)[:, None, None] + masks).astype(np.int32)
    members = np.zeros((m, 2 * m), bool)
    members[np.arange(m), 2 * np.arange(m) + 1] = True
    boxes = np.zeros((m, 4), np.int64)
    for k in range(m):
        ys, xs = np.nonzero(masks[k])
        if len(xs):
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return Candidates(leaf_maps, members, np.arange(m, dtype=np.int16), boxes, masks.reshape(m, -1).sum(1))
