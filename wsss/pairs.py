"""Training pairs: a torch Dataset of (image, mask) from a dataset and a mask source (any stage folder or GT).

The augmentation (random scale, pad, random crop, flip) is :func:`wsss.train.augment_pair`, a pure function of the
arrays and a seed. The sampler hands each sample its own seed (``(seed, rank, position)``), so which crop an image
gets does not depend on worker processes or on where a run was resumed.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler, Sampler

from .datasets import Dataset
from .errors import DatasetError, ImageError
from .io import read_image
from .stages.folder import StageFolder


class MaskPairs(TorchDataset):
    """(image, mask) pairs of ``dataset``'s images with masks from ``labels`` (a :class:`StageFolder`) or, when
    ``labels`` is None, the dataset's GT masks. Images without a mask in the source are left out.

    ``pairs[(index, key)]`` returns the augmented ``(image (3, c, c) float32, mask (c, c) int64)`` for sample
    ``index`` with augmentation seed ``key``; ``pairs.load(index)`` the raw ``(image uint8, mask uint8)``.
    """

    def __init__(self, dataset: Dataset, labels: StageFolder | None = None, *, crop_size: int = 321,
                 scale_range: tuple[float, float] = (0.5, 1.5), flip: bool = True):
        self.dataset = dataset
        self.labels = labels
        if labels is None:
            self.ids = [i for i in dataset.ids if dataset.gt_path(i) is not None]
            source = f"{dataset.root} (GT masks)"
        else:
            self.ids = [i for i in dataset.ids if labels.has(i)]
            source = str(labels.path)
        if not self.ids:
            raise DatasetError(
                f"{source}: no masks for any image of {dataset.root} split {dataset.split!r}; train on a stage "
                "folder made from this dataset split (or --labels gt on a dataset with SegmentationClass/)"
            )
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip = flip

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.ids[index]
        image = read_image(self.dataset.image_path(image_id))
        if self.labels is None:
            mask = self.dataset.load_gt(image_id, image.shape[:2])
        else:
            mask = self.labels.mask(image_id)
            if mask.shape != image.shape[:2]:
                raise ImageError(
                    f"{self.labels.path}: mask of {image_id!r} is {mask.shape[1]}x{mask.shape[0]} but the image "
                    f"{self.dataset.image_path(image_id)} is {image.shape[1]}x{image.shape[0]}; re-run that stage "
                    "on this dataset"
                )
            bad = (mask >= self.dataset.num_classes) & (mask != 255)
            if bad.any():
                raise ImageError(f"{self.labels.path}: mask of {image_id!r} has labels "
                                 f"{np.unique(mask[bad])[:5].tolist()} outside the dataset's "
                                 f"{self.dataset.num_classes} classes; use the matching dataset")
        return image, mask

    def __getitem__(self, item):
        from .train import augment_pair

        index, key = item
        image, mask = self.load(index)
        rng = np.random.default_rng([int(k) for k in key])
        img, msk = augment_pair(image, mask, rng, crop_size=self.crop_size, scale_range=self.scale_range,
                                flip=self.flip)
        return torch.from_numpy(img), torch.from_numpy(msk)


class ResumableSampler(Sampler):
    """Yields ``(index, key)`` for iterations ``start .. iterations - 1`` of ``batch_size`` samples each.

    The order is :class:`torch.utils.data.DistributedSampler`'s (shuffled per epoch with ``seed + epoch``, sharded by
    ``rank``); the sample at per-rank position ``p`` belongs to epoch ``p // per_rank_len``. Starting at iteration
    ``start`` gives exactly the tail of the stream that starting at 0 gives, which makes resume exact.
    """

    def __init__(self, num_samples: int, *, batch_size: int, iterations: int, start: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.iterations = iterations
        self.start = start
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._dist = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
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
            yield order[position % self.per_rank], (self.seed, self.rank, position)
            position += 1
