"""Random-walk propagation of CAMs over the classifier's own feature affinity. Pure functions; no file I/O.

CAMs are precise where they fire and miss most of the object (low recall). AffinityNet (Ahn & Kwak, CVPR 2018)
and IRN (Ahn et al., CVPR 2019) spread them with a random walk over pixel affinities learned from the CAMs; here
the affinity comes, without training, from the features of the very classifier the CAMs came from:

1. **Features** on a grid at stride ``stride`` (8): the backbone's map at that stride (edges, texture) and its
   deepest map upsampled to it (what the classifier saw there), flip-averaged, each L2-normalised per pixel and
   concatenated, so that ``cos`` is the mean of the two levels' cosines. (Subtracting each image's mean feature
   first, or the deepest map alone at stride 16, measured worse on voc-dev train: bench/RESULTS.md.)
2. **Affinity** of grid pixels ``i, j`` within ``radius`` (grid units): ``a_ij = max(0, cos(f_i, f_j)) ** beta``
   (psa's ``beta`` sharpening; a pair across an object boundary gets ~0), ``a_ii = 1``.
3. **Walk**: ``T = D^-1 A`` (rows sum to 1: each pixel's new value is the affinity-weighted mean of its
   neighbourhood), applied ``2 ** log_t`` times to each CAM downsampled (area) to the grid.
4. The walked maps are upsampled (bilinear) to the image and each divided by its own maximum, as CAMs are, so that
   :func:`wsss.seeds.cam.cam_seed_mask` and the guide labeller read them like CAMs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def grid_pairs(height: int, width: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(src, dst)`` flat indices of every ordered pair of grid pixels at distance <= ``radius`` (self included)."""
    r = int(np.floor(radius))
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius ** 2]
    yy, xx = np.mgrid[:height, :width]
    src, dst = [], []
    for dy, dx in offsets:
        ok = (yy + dy >= 0) & (yy + dy < height) & (xx + dx >= 0) & (xx + dx < width)
        src.append((yy * width + xx)[ok])
        dst.append(((yy + dy) * width + xx + dx)[ok])
    return torch.from_numpy(np.concatenate(src)), torch.from_numpy(np.concatenate(dst))


def affinity_features(model, image: np.ndarray, *, stride: int = 8) -> torch.Tensor:
    """(C, h, w) float32 features of ``image`` (H, W, 3 uint8 RGB) on the stride-``stride`` grid (rules 1).

    ``model`` is a :class:`wsss.models.classifier.CAMClassifier` (any module with ``normalise`` and a ``backbone``
    following the backbone contract: ``forward`` -> maps shallow to deep, their ``strides``).
    """
    backbone = model.backbone
    strides = list(backbone.strides)
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = model.normalise(torch.from_numpy(np.array(image, np.uint8)).to(device).permute(2, 0, 1)[None])
        maps = backbone(torch.cat([x, x.flip(-1)]))
        if stride not in strides:
            raise ValueError(f"no backbone map at stride {stride}; it has {sorted(set(strides))}")
        shallow = maps[strides.index(stride)].float()
        deep = maps[-1].float()
        size = shallow.shape[-2:]
        if deep.shape[-2:] != size:
            deep = F.interpolate(deep, size=size, mode="bilinear", align_corners=False)
        parts = []
        for m in (shallow, deep):
            m = m[:1] + m[1:].flip(-1)
            parts.append(F.normalize(m, dim=1))
        return torch.cat(parts, dim=1)[0].cpu()


def pair_dots(flat: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, *, width: int, radius: float,
              band: int = 8) -> torch.Tensor:
    """``(flat[:, src] * flat[:, dst]).sum(0)`` for grid pairs at most ``radius`` rows apart, one matrix product per
    band of ``band`` grid rows against the rows within reach (50x faster than gathering the pairs' features)."""
    out = torch.empty(len(src), dtype=flat.dtype)
    reach = int(np.floor(radius))
    height = flat.shape[1] // width
    rows = src // width
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        lo, hi = max(0, y0 - reach) * width, min(height, y1 + reach) * width
        sel = (rows >= y0) & (rows < y1)
        gram = flat[:, y0 * width:y1 * width].T @ flat[:, lo:hi]
        out[sel] = gram[src[sel] - y0 * width, dst[sel] - lo]
    return out


def transition_matrix(features: torch.Tensor, *, radius: float = 5.0, beta: float = 16.0):
    """Row-stochastic sparse (n, n) transition matrix ``D^-1 A`` of the grid (rules 2-3), n = h * w, as a
    ``scipy.sparse.csr_matrix`` (float32)."""
    import scipy.sparse

    c, h, w = features.shape
    src, dst = grid_pairs(h, w, radius)
    flat = F.normalize(features.reshape(c, -1).float(), dim=0)
    value = pair_dots(flat, src, dst, width=w, radius=radius).clamp_min(0) ** beta
    value[src == dst] = 1.0
    degree = torch.zeros(h * w).index_add_(0, src, value)
    value = (value / degree[src]).numpy()
    return scipy.sparse.csr_matrix((value, (src.numpy(), dst.numpy())), shape=(h * w, h * w), dtype=np.float32)


def random_walk(cams: np.ndarray, transition, grid: tuple[int, int], *, log_t: int = 8) -> np.ndarray:
    """Walk ``cams`` (K, H, W) over ``transition`` (on a ``grid`` of (h, w)) ``2 ** log_t`` steps (rules 3-4).

    Returns (K, H, W) float32, each map divided by its maximum (all-zero maps stay zero).
    """
    cams = np.asarray(cams, np.float32)
    k, height, width = cams.shape
    if k == 0:
        return cams.copy()
    h, w = grid
    x = F.interpolate(torch.from_numpy(cams)[None], size=(h, w), mode="area")[0].reshape(k, -1).T.numpy()
    x = np.ascontiguousarray(x)
    for _ in range(2 ** log_t):
        x = transition @ x
    x = torch.from_numpy(np.ascontiguousarray(x.T)).reshape(1, k, h, w)
    up = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[0]
    peak = up.flatten(1).amax(dim=1).clamp_min(1e-5)
    return (up / peak[:, None, None]).numpy().astype(np.float32)


def propagate_cams(model, image: np.ndarray, cams: np.ndarray, *, stride: int = 8, radius: float = 5.0,
                   beta: float = 16.0, log_t: int = 8) -> np.ndarray:
    """CAMs (K, H, W) of ``image`` (H, W, 3 uint8) walked over the classifier's feature affinity (module rules)."""
    if cams.shape[1:] != image.shape[:2]:
        raise ValueError(f"cams {cams.shape[1:]} and image {image.shape[:2]} differ in size")
    if len(cams) == 0:
        return np.asarray(cams, np.float32).copy()
    features = affinity_features(model, image, stride=stride)
    transition = transition_matrix(features, radius=radius, beta=beta)
    return random_walk(cams, transition, tuple(features.shape[1:]), log_t=log_t)


# ------------------------------------------------------------------------------------- learned affinity
def embedding_of(net, image: np.ndarray) -> torch.Tensor:
    """(D, h, w) float32 embedding of ``image`` (H, W, 3 uint8) by an :class:`~wsss.models.affinity_head.AffinityNet`
    on its stride-8 grid, averaged with the flipped image's."""
    device = next(net.parameters()).device
    with torch.inference_mode():
        x = net.normalise(torch.from_numpy(np.array(image, np.uint8)).to(device).permute(2, 0, 1)[None])
        e = net(torch.cat([x, x.flip(-1)]))
        return ((e[0] + e[1].flip(-1)) / 2).float().cpu()


def learned_transition(embedding: torch.Tensor, *, radius: float = 5.0, beta: float = 32.0, chunk: int = 1 << 18):
    """Row-stochastic sparse (n, n) ``D^-1 A`` of the grid with psa's learned affinity
    ``a_ij = exp(-mean_c |e_i - e_j|) ** beta`` within ``radius``, ``a_ii = 1`` (``scipy.sparse.csr_matrix``)."""
    import scipy.sparse

    d, h, w = embedding.shape
    src, dst = grid_pairs(h, w, radius)
    flat = embedding.reshape(d, -1).float()
    dist = torch.cat([(flat[:, src[i:i + chunk]] - flat[:, dst[i:i + chunk]]).abs().mean(0)
                      for i in range(0, len(src), chunk)])
    value = torch.exp(-beta * dist)  # exp(-dist) ** beta
    value[src == dst] = 1.0
    degree = torch.zeros(h * w).index_add_(0, src, value)
    value = (value / degree[src]).numpy()
    return scipy.sparse.csr_matrix((value, (src.numpy(), dst.numpy())), shape=(h * w, h * w), dtype=np.float32)


def propagate_cams_learned(net, image: np.ndarray, cams: np.ndarray, *, radius: float = 5.0, beta: float = 32.0,
                           log_t: int = 8) -> np.ndarray:
    """CAMs (K, H, W) of ``image`` walked over a trained AffinityNet's affinity (:func:`learned_transition`)."""
    if cams.shape[1:] != image.shape[:2]:
        raise ValueError(f"cams {cams.shape[1:]} and image {image.shape[:2]} differ in size")
    if len(cams) == 0:
        return np.asarray(cams, np.float32).copy()
    e = embedding_of(net, image)
    return random_walk(cams, learned_transition(e, radius=radius, beta=beta), tuple(e.shape[1:]), log_t=log_t)
