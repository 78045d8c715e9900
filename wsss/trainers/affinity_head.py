"""Training AffinityNet's head (:mod:`wsss.models.affinity_head`) on a frozen CAM classifier, psa's way.

Targets: each image's CAM-like maps (a stage's ``scores/``, best the training-free walk's) reduced to the stride-8
grid and divided by their maxima give *confident regions* (:func:`confident_labels`): a class where its map is the
highest and >= ``confident_fg``, background where every map is < ``confident_bg``, the rest unused (255). The loss
(:func:`affinity_loss`, psa's): for every pair of grid pixels within ``radius`` whose labels are both known, the
affinity should be 1 when they agree and 0 when they differ; the background pairs, the foreground pairs and the
differing pairs are averaged apart and weighed 1/4, 1/4, 1/2.

Everything lives in the stage folder: ``affinity_head.pt`` (the head and the backbone it sits on, the optimizer
and the epoch while unfinished; ``complete`` once trained; written atomically after every epoch through
:func:`wsss.fit.fit`, the one training loop, so a killed run resumes from its last epoch) and
``affinity_train_log.csv`` (one row per epoch). Images whose maps or pixels cannot be read are left out and listed
in ``affinity_train_skipped.csv``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..config import AffinityNetConfig, config_to_dict
from ..datasets import Dataset
from ..errors import ConfigError, UnsafeFileError
from ..fit import FitState, epochs_done, fit, mark_complete, training_state
from ..io import load_checkpoint, save_checkpoint, write_bytes, write_csv
from ..models.affinity_head import GRID_STRIDE, AffinityNet, grid_size
from ..runtime import pick_device

log = logging.getLogger(__name__)

CHECKPOINT = "affinity_head.pt"
TRAIN_LOG = "affinity_train_log.csv"
SKIPPED = "affinity_train_skipped.csv"
LOG_HEADER = "epoch,iterations,images,mean_loss,lr,images_per_second,epoch_seconds,train_seconds\n"
IGNORE = 255


def confident_labels(maps: np.ndarray, class_ids, grid: tuple[int, int], *, fg: float, bg: float) -> np.ndarray:
    """(h, w) uint8 training regions on ``grid`` from ``maps`` (K, H, W) of classes ``class_ids`` (module doc):
    area-averaged to the grid, each divided by its maximum; no map at all: everything background."""
    if len(class_ids) == 0:
        return np.zeros(grid, np.uint8)
    m = F.interpolate(torch.from_numpy(np.asarray(maps, np.float32))[None], size=grid, mode="area")[0]
    m = m / m.flatten(1).amax(dim=1).clamp_min(1e-5)[:, None, None]
    top, arg = m.max(dim=0)
    out = torch.full(grid, IGNORE, dtype=torch.uint8)
    ids = torch.as_tensor(np.asarray(class_ids, np.int64))
    out[top >= fg] = ids[arg[top >= fg]].to(torch.uint8)
    out[top < bg] = 0
    return out.numpy()


def half_offsets(radius: float) -> list[tuple[int, int]]:
    """Grid offsets ``(dy, dx)`` within ``radius``, one of each pair of opposite ones, self excluded."""
    r = int(math.floor(radius))
    return [(dy, dx) for dy in range(0, r + 1) for dx in range(-r, r + 1)
            if dy * dy + dx * dx <= radius ** 2 and (dy > 0 or dx > 0)]


def affinity_loss(embedding: torch.Tensor, labels: torch.Tensor, *, radius: float = 5.0) -> torch.Tensor:
    """psa's loss (module doc) of ``embedding`` (B, D, h, w) against ``labels`` (B, h, w) (0 background, > 0 a
    class, 255 unused). A kind of pair that does not occur adds nothing."""
    eps = 1e-5
    labels = labels.long()
    h, w = labels.shape[-2:]
    terms = {"bg": [], "fg": [], "neg": []}
    for dy, dx in half_offsets(radius):
        if dy >= h or abs(dx) >= w:
            continue
        x0, x1 = max(0, -dx), min(w, w - dx)
        a, b = embedding[:, :, :h - dy, x0:x1], embedding[:, :, dy:, x0 + dx:x1 + dx]
        la, lb = labels[:, :h - dy, x0:x1], labels[:, dy:, x0 + dx:x1 + dx]
        aff = torch.exp(-(a - b).abs().mean(dim=1))
        known = (la != IGNORE) & (lb != IGNORE)
        same = known & (la == lb)
        terms["bg"].append(-torch.log(aff[same & (la == 0)] + eps))
        terms["fg"].append(-torch.log(aff[same & (la > 0)] + eps))
        terms["neg"].append(-torch.log(1 + eps - aff[known & (la != lb)]))
    loss = embedding.sum() * 0.0
    for name, weight in (("bg", 0.25), ("fg", 0.25), ("neg", 0.5)):
        values = torch.cat(terms[name]) if terms[name] else embedding.new_zeros(0)
        if values.numel():
            loss = loss + weight * values.mean()
    return loss


class RegionDataset(torch.utils.data.Dataset):
    """(normalised crop (3, c, c), its training regions (c / 8, c / 8) long) pairs: a random ``crop_size`` crop at a
    grid-aligned place (zero-padded, regions 255, when the image is smaller) and a random horizontal flip."""

    def __init__(self, dataset: Dataset, labels_folder, ids: list[str], config: AffinityNetConfig, normalisation):
        self.dataset, self.folder, self.ids, self.config = dataset, labels_folder, list(ids), config
        self.mean = np.asarray(normalisation[0], np.float32) * 255.0  # the backbone's, on the 0..1 scale
        self.std = np.asarray(normalisation[1], np.float32) * 255.0

    def __len__(self) -> int:
        return len(self.ids)

    def regions(self, image_id: str, image: np.ndarray) -> np.ndarray:
        maps, class_ids = self.folder.scores_at(image_id, image.shape[:2])
        keep = np.asarray(class_ids) != 0
        return confident_labels(maps[keep], np.asarray(class_ids)[keep], grid_size(*image.shape[:2]),
                                fg=self.config.confident_fg, bg=self.config.confident_bg)

    def __getitem__(self, k: int):
        sample = self.dataset.load(self.ids[k], gt=False)
        image = np.asarray(sample.image)
        regions = self.regions(sample.id, image)
        gh, gw = regions.shape
        cells = self.config.crop_size // GRID_STRIDE
        gy = int(torch.randint(0, max(0, gh - cells) + 1, (1,)))
        gx = int(torch.randint(0, max(0, gw - cells) + 1, (1,)))
        crop = np.zeros((cells * GRID_STRIDE, cells * GRID_STRIDE, 3), np.float32)
        part = (image[gy * GRID_STRIDE:(gy + cells) * GRID_STRIDE, gx * GRID_STRIDE:(gx + cells) * GRID_STRIDE]
                .astype(np.float32) - self.mean) / self.std
        crop[:part.shape[0], :part.shape[1]] = part
        target = np.full((cells, cells), IGNORE, np.uint8)
        sub = regions[gy:gy + cells, gx:gx + cells]
        # a partial last cell of the image: its pixels are there, the rest of the cell is padding
        target[:sub.shape[0], :sub.shape[1]] = sub
        if float(torch.rand(1)) < 0.5:
            crop, target = crop[:, ::-1], target[:, ::-1]
        return (torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(target)).long())


def read_head_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: affinity head not found; give the affinity_head.pt of a refine --affinitynet "
                          "stage folder")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or \
            not isinstance(state.get("meta"), dict) or state["meta"].get("kind") != "affinity_head":
        raise UnsafeFileError(f"{path}: not a wsss affinity head (no model, or its meta is not kind affinity_head); "
                              "give the affinity_head.pt of a refine --affinitynet stage folder")
    return state


def build_affinity_net(classifier, *, dim: int = 128) -> AffinityNet:
    """An :class:`AffinityNet` on (a copy of) ``classifier``'s backbone, with an untrained head."""
    import copy

    return AffinityNet(copy.deepcopy(classifier.backbone), dim=dim)


def load_affinity_net(path: str | Path, classifier, *, device="cpu") -> AffinityNet:
    """The trained net of ``path`` (head and backbone weights) on ``classifier``'s architecture, in eval mode."""
    state = read_head_checkpoint(path)
    meta = state["meta"]
    if meta.get("backbone") != classifier.backbone_name:
        raise ConfigError(f"{path}: trained on a {meta.get('backbone')} classifier, not this one; train it again "
                          "for this classifier")
    net = build_affinity_net(classifier, dim=int(meta["dim"]))
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ConfigError(f"{path}: does not fit this classifier ({str(exc).splitlines()[0]}); train it again for "
                          "this classifier") from None
    return net.to(device).eval()


def train_affinity_head(dataset: Dataset, labels_folder, classifier_path: str | Path, out_dir: str | Path,
                        config: AffinityNetConfig) -> Path:
    """Train (or resume, or reuse when complete) the head of ``config`` on the regions of ``labels_folder``'s maps
    of ``dataset``'s images; returns the checkpoint path."""
    from ..trainers.cam_classifier import load_classifier

    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    if config.epochs < 1 or config.batch_size < 1 or config.crop_size < 2 * GRID_STRIDE \
            or config.crop_size % GRID_STRIDE:
        raise ConfigError(f"epochs {config.epochs}, batch_size {config.batch_size}, crop_size {config.crop_size}: "
                          f"need epochs >= 1, batch_size >= 1, crop_size a multiple of {GRID_STRIDE} >= "
                          f"{2 * GRID_STRIDE}")
    for name, value in (("--confident-fg", config.confident_fg), ("--confident-bg", config.confident_bg)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} {value}: give a fraction of the map's maximum, 0..1")
    if config.confident_bg > config.confident_fg:
        raise ConfigError(f"--confident-bg {config.confident_bg} is above --confident-fg {config.confident_fg}")
    saved, state = None, FitState()
    if ckpt_path.exists():
        saved = read_head_checkpoint(ckpt_path)
        if saved.get("complete"):
            log.info("%s: training already complete; reusing it", ckpt_path)
            return ckpt_path
        state = epochs_done(saved)
        log.info("%s: resuming after epoch %d", ckpt_path, state.epoch)
    device = pick_device(config.device)
    classifier = load_classifier(classifier_path)
    torch.manual_seed(config.seed)
    net = build_affinity_net(classifier, dim=config.dim)
    optimizer = torch.optim.AdamW(net.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data = RegionDataset(dataset, labels_folder, [], config, (net.backbone.mean, net.backbone.std))
    ids, skipped = [], []
    for image_id in dataset.ids:
        if not labels_folder.has(image_id):
            skipped.append((image_id, f"no maps in {labels_folder.path}"))
            continue
        try:
            data.regions(image_id, dataset.load(image_id, gt=False).image)
        except Exception as exc:  # noqa: BLE001 - any unreadable image or map: left out and listed
            skipped.append((image_id, f"{type(exc).__name__}: {exc}"))
            continue
        ids.append(image_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / SKIPPED, ["image_id", "reason"], [list(s) for s in skipped])
    if not ids:
        raise ConfigError(f"{labels_folder.path}: no image of split {dataset.split!r} has maps to learn the "
                          "affinity from; give --labels a stage folder with scores/ for these images")
    data.ids = ids
    batch = min(config.batch_size, len(ids))
    meta = {"kind": "affinity_head", "backbone": classifier.backbone_name, "dim": config.dim,
            "classifier": str(classifier_path), "config": config_to_dict(config), "train_ids": len(ids)}
    log_path = out_dir / TRAIN_LOG
    write_bytes(log_path, (LOG_HEADER + "".join(state.rows)).encode())

    def epoch_batches(epoch: int):
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=gen)

    def on_epoch(s: FitState) -> None:
        seen, mean = sum(s.epoch_sizes), np.mean(s.epoch_losses) if s.epoch_losses else math.nan
        s.rows.append(f"{s.epoch},{len(s.epoch_losses)},{seen},{mean:.5f},{s.lr:.6f},"
                      f"{seen / max(s.epoch_seconds, 1e-9):.3f},{s.epoch_seconds:.2f},{s.elapsed:.2f}\n")
        log.info("affinity head epoch %d: loss %.4f", s.epoch, mean)

    def save(s: FitState) -> None:
        save_checkpoint(ckpt_path, {**training_state(net, None if s.complete else optimizer), "epoch": s.epoch,
                                    "train_seconds": s.elapsed, "complete": s.complete, "meta": meta,
                                    "log": s.rows})
        write_bytes(log_path, (LOG_HEADER + "".join(s.rows)).encode())

    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    fit(net, optimizer, epoch_batches, lambda e, t: affinity_loss(e, t, radius=config.radius), lr=config.lr,
        epochs=config.epochs, steps_per_epoch=len(ids) // batch, state=state, restore_from=saved, budget=budget,
        device=device, save=save, on_epoch=on_epoch, desc="affinity head", unit="batch", where=str(ckpt_path))
    mark_complete(ckpt_path, read_head_checkpoint(ckpt_path))
    return ckpt_path
