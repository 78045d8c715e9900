"""Training pairs: a torch Dataset of (image, mask) from a dataset and a mask source (any stage folder or GT).

The augmentation (random scale, pad, random crop, flip) is :func:`augment_pair`, a pure function of the
arrays and a seed. The sampler hands each sample its own seed (``(seed, rank, position)``), so which crop an image
gets does not depend on worker processes or on where a run was resumed.

Bad pairs are found before training, not mid-way: :class:`MaskPairs` loads every pair once up front with the very
code the loader uses (full image decode, mask read, size and value checks), so an unreadable or truncated image, a
mask of another size, mask values outside ``{0..K-1, 255}`` or a missing mask is dropped with an error naming the
file and the fix (``pairs.failures``) and training never meets it. A full decode is the only check that sees a
truncated JPEG (a header read does not); it costs about as much as the images' first epoch of loading (about 3.5 ms
a VOC pair on one core, roughly 40 s for VOC-aug's 10,582 pairs; spread over ``check_threads`` threads), so it is
done once: the outcome per pair is cached in the stage folder keyed by each file's size and mtime, and a resumed
run re-checks only changed files. The set of usable pairs is a function of the files, so resume stays exact; a file
that changes between runs changes the set (the trainer warns that the order then differs from an uninterrupted
run), and a file that goes bad while training runs stops it with that file's error (re-running drops it).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler, Sampler

from .conventions import IGNORE
from .datasets import Dataset
from .errors import DatasetError, ImageError, WsssError
from .folders import StageFolder
from .io import read_image, read_json, write_json
from .models.backbones import IMAGENET_MEAN, IMAGENET_STD
from .models.inference import normalize_image
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

CHECK_CACHE = "pairs_checked.json"  # per-pair outcome of the up-front check, keyed by the files' size and mtime



def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, crop_size: int,
                 scale_range: tuple[float, float] = (0.5, 1.5), flip: bool = True,
                 normalisation=(IMAGENET_MEAN, IMAGENET_STD)) -> tuple[np.ndarray, np.ndarray]:
    """DeepLab's training augmentation on one pair.

    ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 -> ``(image (3, c, c) float32 normalised, mask (c, c) int64)``
    with ``c = crop_size``: random scale in ``scale_range`` (bilinear image, nearest mask), padding to the crop size
    (image with the mean, i.e. 0 after normalisation; mask with 255), a random crop and a random horizontal flip.
    ``normalisation``: (mean, std) on the 0..1 scale, the model's (:func:`wsss.models.inference.input_normalisation`).
    """
    import cv2

    h, w = mask.shape
    scale = float(rng.uniform(*scale_range))
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    img = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    msk = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST) if (nh, nw) != (h, w) else mask
    img = normalize_image(img, normalisation)
    ph, pw = max(crop_size - nh, 0), max(crop_size - nw, 0)
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
        msk = np.pad(msk, ((0, ph), (0, pw)), constant_values=IGNORE)
    y0 = int(rng.integers(0, img.shape[0] - crop_size + 1))
    x0 = int(rng.integers(0, img.shape[1] - crop_size + 1))
    img = img[y0:y0 + crop_size, x0:x0 + crop_size]
    msk = msk[y0:y0 + crop_size, x0:x0 + crop_size]
    if flip and rng.random() < 0.5:
        img, msk = img[:, ::-1], msk[:, ::-1]
    return np.ascontiguousarray(img.transpose(2, 0, 1)), msk.astype(np.int64)


def augment_tagged(image: np.ndarray, *, crop_size: int, resize_long: tuple[int, int],
                   normalisation=(IMAGENET_MEAN, IMAGENET_STD), jitter: float = 0.3, hue: float = 0.05,
                   generator: torch.Generator | None = None) -> np.ndarray:
    """The CAM classifier's training augmentation on one image: random rescale (long side drawn in
    ``resize_long``), random crop of ``crop_size`` (zero-padded at a random place when smaller), horizontal flip,
    colour jitter (brightness, contrast and saturation factors in ``1 +- jitter``, hue shift in ``+- hue`` of the
    circle), then the backbone's ``normalisation``. Every draw comes from torch's RNG (``generator`` or the global
    one, which the classifier's checkpoint carries: exact resume).

    ``image`` (H, W, 3) uint8 -> (3, c, c) float32. OpenCV and NumPy: torchvision's uint8 colour jitter took about
    30 ms an image in the trainer's process (hue alone 5 ms on one thread, several times that on two busy ones),
    a third of a Lite0 training step; this whole function takes about 8 ms (bench/RESULTS.md, issue 15).
    """
    import cv2

    def draw(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=generator))

    h, w = image.shape[:2]
    long_side = int(torch.randint(resize_long[0], resize_long[1] + 1, (1,), generator=generator))
    scale = long_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    c = crop_size
    y = int(torch.randint(0, abs(nh - c) + 1, (1,), generator=generator))
    x = int(torch.randint(0, abs(nw - c) + 1, (1,), generator=generator))
    crop = np.zeros((c, c, 3), np.uint8)
    src = image[y if nh > c else 0:, x if nw > c else 0:][:c, :c]
    oy, ox = (0 if nh > c else y), (0 if nw > c else x)
    crop[oy:oy + src.shape[0], ox:ox + src.shape[1]] = src
    if float(torch.rand(1, generator=generator)) < 0.5:
        crop = crop[:, ::-1]
    f = crop.astype(np.float32) * draw(1 - jitter, 1 + jitter)  # brightness
    grey = f @ np.array([0.299, 0.587, 0.114], np.float32)
    f = np.clip((f - grey.mean()) * draw(1 - jitter, 1 + jitter) + grey.mean(), 0, 255)  # contrast
    grey = (f @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    f = np.clip((f - grey) * draw(1 - jitter, 1 + jitter) + grey, 0, 255) / 255.0  # saturation
    shift = draw(-hue, hue)
    if shift:
        hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)  # float input: hue in degrees
        hsv[..., 0] = (hsv[..., 0] + 360.0 * shift) % 360.0
        f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    mean, std = (np.asarray(v, np.float32) for v in normalisation)
    return np.ascontiguousarray(((f - mean) / std).transpose(2, 0, 1))


class MaskPairs(TorchDataset):
    """(image, mask) pairs of ``dataset``'s images with masks from ``labels`` (a :class:`StageFolder`) or, when
    ``labels`` is None, the dataset's GT masks.

    With ``check`` (the default) every pair is loaded once up front (see the module doc); bad pairs and images
    without a mask in the source are left out and listed in ``failures`` (``(image_id, reason)`` in dataset order,
    then the split file's problems: duplicate or unsafe ids). ``check_cache`` (a file in the stage folder) keeps the
    outcomes across runs (``write_cache=False``: read it only, e.g. torchrun ranks other than 0);
    ``check_threads`` reads pairs in parallel. No usable pair at all raises
    :class:`~wsss.errors.DatasetError`.

    ``normalisation`` is the model's input (mean, std) (:func:`wsss.models.inference.input_normalisation`).
    ``pairs[(index, key)]`` returns the augmented ``(image (3, c, c) float32, mask (c, c) int64)`` for sample
    ``index`` with augmentation seed ``key``; ``pairs.load(index)`` the raw ``(image uint8, mask uint8)``.
    """

    def __init__(self, dataset: Dataset, labels: StageFolder | None = None, *, crop_size: int = 321,
                 scale_range: tuple[float, float] = (0.5, 1.5), flip: bool = True, check: bool = True,
                 check_cache: str | os.PathLike | None = None, check_threads: int = 1, progress: bool = True,
                 write_cache: bool = True, normalisation: tuple = (IMAGENET_MEAN, IMAGENET_STD)):
        self.dataset = dataset
        self.normalisation = normalisation
        self.labels = labels
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip = flip
        self.failures: list[tuple[str, str]] = []
        have, missing = [], []
        for image_id in dataset.ids:
            reason = self._missing_reason(image_id)
            (missing if reason else have).append((image_id, reason))
        if not have:
            source = f"{dataset.root} (GT masks)" if labels is None else str(labels.path)
            raise DatasetError(
                f"{source}: no masks for any image of {dataset.root} split {dataset.split!r}; train on a stage "
                "folder made from this dataset split (or --labels gt on a dataset with SegmentationClass/)"
            )
        errors = dict(missing)
        if check:
            errors.update(self._check_pairs([i for i, _ in have], check_cache, check_threads, progress,
                                             write_cache))
        self.ids = [i for i in dataset.ids if i not in errors]
        self.failures = [(i, errors[i]) for i in dataset.ids if i in errors] + list(dataset.problems)
        if not self.ids:
            shown = "; ".join(f"{i}: {why}" for i, why in self.failures[:3])
            raise DatasetError(
                f"{labels.path if labels is not None else dataset.root}: no usable training pair among the "
                f"{len(dataset.ids)} image(s) of split {dataset.split!r}, every one failed the check (first: "
                f"{shown}); fix or replace those files and re-run"
            )

    # ------------------------------------------------------------------------------------------ checking
    def _missing_reason(self, image_id: str) -> str:
        """Why ``image_id`` has no mask in the source ('' when it has one)."""
        if self.labels is None:
            if self.dataset.gt_path(image_id) is not None:
                return ""
            return (f"{self.dataset.root}: no GT mask for image {image_id!r} ({self.dataset.layout} layout); add "
                    f"its mask file or remove it from split {self.dataset.split!r}, or train on a stage folder")
        try:
            self.labels._row(image_id)
        except ImageError as exc:
            return str(exc)
        return ""

    def _files(self, image_id: str) -> list:
        """(size, mtime) of the image and mask files: the cache key of one pair's check."""
        mask = (self.dataset.gt_path(image_id) if self.labels is None
                else self.labels.path / self.labels.rows[image_id]["mask"])
        keys = []
        for path in (self.dataset.image_path(image_id), mask):
            try:
                st = os.stat(path)
                keys.append([st.st_size, st.st_mtime_ns])
            except (OSError, TypeError):
                keys.append(None)
        return keys

    def check_pair(self, image_id: str) -> str:
        """'' when the pair of ``image_id`` loads (exactly as the loader will load it), else the error."""
        try:
            self._load_id(image_id)
        except WsssError as exc:
            return str(exc)
        return ""

    def _check_pairs(self, ids: list[str], cache_path, threads: int, progress: bool,
                     write_cache: bool = True) -> dict[str, str]:
        source = "gt" if self.labels is None else str(Path(self.labels.path).resolve())
        header = {"version": 1, "source": source, "num_classes": self.dataset.num_classes}
        cached: dict = {}
        if cache_path is not None and Path(cache_path).exists():
            try:
                old = read_json(cache_path)
                if {k: old.get(k) for k in header} == header:
                    cached = old.get("pairs", {})
            except (OSError, ValueError):
                cached = {}
        keys = {i: self._files(i) for i in ids}
        todo = [i for i in ids if not (i in cached and cached[i][0] == keys[i])]
        results = {i: cached[i][1] for i in ids if i not in todo}
        bar = dict(total=len(todo), desc="checking training pairs", unit="pair", enabled=progress, leave=False)
        if threads > 1 and len(todo) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                outcomes = list(progress_bar(pool.map(self.check_pair, todo), **bar))
        else:
            outcomes = [self.check_pair(i) for i in progress_bar(todo, **bar)]
        results.update(zip(todo, outcomes))
        if cache_path is not None and todo and write_cache:
            write_json(cache_path, {**header, "pairs": {i: [keys[i], results[i]] for i in ids}})
        if len(todo) < len(ids):
            log.info("training pairs: %d checked now, %d unchanged since the last check", len(todo),
                     len(ids) - len(todo))
        return {i: why for i, why in results.items() if why}

    def __len__(self) -> int:
        return len(self.ids)

    def class_presence(self) -> list[frozenset[int]]:
        """The classes (not background 0, not 255) in each pair's mask, in ``self.ids`` order: what
        :func:`repeat_factors` counts. Reads every mask once (about 1.5 ms a VOC mask)."""
        present = []
        for image_id in self.ids:
            if self.labels is None:
                mask = self.dataset.load_gt(image_id)
            else:
                mask = self.labels.mask(image_id)
            present.append(frozenset(int(c) for c in np.unique(mask) if c not in (0, IGNORE)))
        return present

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._load_id(self.ids[index])

    def _load_id(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.dataset.image_path(image_id))
        if self.labels is None:
            mask = self.dataset.load_gt(image_id, image.shape[:2])
        else:
            mask = self.labels.mask(image_id)
            mask_path = self.labels.path / self.labels.rows[image_id]["mask"]
            if mask.shape != image.shape[:2]:
                raise ImageError(
                    f"{mask_path}: mask of {image_id!r} is {mask.shape[1]}x{mask.shape[0]} but the image "
                    f"{self.dataset.image_path(image_id)} is {image.shape[1]}x{image.shape[0]}; re-run that stage "
                    "on this dataset"
                )
            bad = (mask >= self.dataset.num_classes) & (mask != 255)
            if bad.any():
                raise ImageError(f"{mask_path}: mask values {np.unique(mask[bad])[:5].tolist()} are outside "
                                 f"0..{self.dataset.num_classes - 1} and 255 (the dataset's classes); use the "
                                 "matching dataset, or relabel them")
        return image, mask

    def __getitem__(self, item):
        index, key = item
        image, mask = self.load(index)
        rng = np.random.default_rng([int(k) for k in key])
        img, msk = augment_pair(image, mask, rng, crop_size=self.crop_size, scale_range=self.scale_range,
                                flip=self.flip, normalisation=self.normalisation)
        return torch.from_numpy(img), torch.from_numpy(msk)


def repeat_factors(presence: list[frozenset[int]], threshold: float) -> np.ndarray:
    """Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019): class ``c`` held by a share ``f_c`` of the images
    gets ``r_c = max(1, sqrt(threshold / f_c))``; an image is seen ``max(1, max over its classes of r_c)`` times an
    epoch, so images of rare classes come round more often and the common ones as before."""
    if threshold <= 0:
        return np.ones(len(presence))
    counts: dict[int, int] = {}
    for classes in presence:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    n = max(1, len(presence))
    rate = {c: max(1.0, float(np.sqrt(threshold / (k / n)))) for c, k in counts.items()}
    return np.array([max([1.0] + [rate[c] for c in classes]) for classes in presence])


def repeated_indices(factors: np.ndarray, seed: int = 0) -> list[int]:
    """One epoch's sample list: index ``i`` ``floor(r_i)`` times plus once more with probability ``r_i - floor(r_i)``
    (drawn once with ``seed``, so every epoch and every resumed run has the same list)."""
    factors = np.asarray(factors, dtype=np.float64)
    whole = np.floor(factors).astype(np.int64)
    extra = np.random.default_rng(seed).random(len(factors)) < (factors - whole)
    return np.repeat(np.arange(len(factors)), whole + extra).tolist()


class ResumableSampler(Sampler):
    """Yields ``(index, key)`` for iterations ``start .. iterations - 1`` of ``batch_size`` samples each.

    The order is :class:`torch.utils.data.DistributedSampler`'s (shuffled per epoch with ``seed + epoch``, sharded by
    ``rank``); the sample at per-rank position ``p`` belongs to epoch ``p // per_rank_len``. Starting at iteration
    ``start`` gives exactly the tail of the stream that starting at 0 gives, which makes resume exact.
    """

    def __init__(self, num_samples: int, *, batch_size: int, iterations: int, start: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_indices: list[int] | None = None):
        # epoch_indices: the samples of one epoch (repeats allowed, :func:`repeated_indices`); default each once
        self.indices = list(range(num_samples)) if epoch_indices is None else list(epoch_indices)
        if any(not 0 <= i < num_samples for i in self.indices) or not self.indices:
            raise ValueError(f"epoch_indices must be a non-empty list of indices in 0..{num_samples - 1}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.iterations = iterations
        self.start = start
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._dist = DistributedSampler(range(len(self.indices)), num_replicas=world_size, rank=rank, shuffle=True,
                                        seed=seed, drop_last=False)
        self.per_rank = len(self._dist)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start) * self.batch_size

    def epoch_of(self, iteration: int) -> int:
        return (iteration * self.batch_size) // self.per_rank

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        position = self.start * self.batch_size
        end = self.iterations * self.batch_size
        epoch, order = -1, []
        while position < end:
            if position // self.per_rank != epoch:
                epoch = position // self.per_rank
                self._dist.set_epoch(epoch)
                order = list(self._dist)
            yield self.indices[order[position % self.per_rank]], (self.seed, self.rank, position)
            position += 1
