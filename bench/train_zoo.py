"""Bounded real-data training of one zoo model on a labelled split, evaluated on another split.

A measuring script, not the product's training loop (that is ``wsss train``): it keeps the whole (downscaled) split
in memory, trains for a fixed wall-clock budget on 2 CPU threads and evaluates at the GT's full resolution
(predictions are computed on the downscaled image and their class probabilities bilinearly resized to the GT size).

Examples (the commands behind bench/RESULTS.md, "issue 7" section)::

    nice -n 10 python bench/train_zoo.py --model unet --dataset ../shared/data/isbi2012-membrane \
        --train-split train --eval-split val --scale 0.5 --crop 132 --batch 2 --model-arg width=16 --minutes 12
    nice -n 10 python bench/train_zoo.py --model segnet_basic --dataset ../shared/data/camvid \
        --train-split train --eval-split test --scale 0.25 --batch 4 --class-weights median --minutes 12

For the unpadded U-Net, training samples follow the paper's overlap-tile scheme with real context: the whole image is
mirrored by 92 px once, a (crop + 184) px input tile is cut from it and its central crop x crop labels are the target
of ``model.forward_tile``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss.conventions import IGNORE  # noqa: E402
from wsss.datasets import open_dataset  # noqa: E402
from wsss.metrics import confusion_matrix, scores_from_confusion  # noqa: E402
from wsss.models import build_model  # noqa: E402
from wsss.models.inference import normalize_image, segment  # noqa: E402
from wsss.models.unet import UNPADDED_MARGIN, UNet, unet_tile_size  # noqa: E402


def load_split(dataset, scale: float):
    images, masks, full_masks = [], [], []
    for image_id in dataset.ids:
        sample = dataset.load(image_id)
        h, w = sample.gt.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        images.append(cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA) if scale != 1 else sample.image)
        masks.append(cv2.resize(sample.gt, size, interpolation=cv2.INTER_NEAREST) if scale != 1 else sample.gt)
        full_masks.append(sample.gt)
    return images, masks, full_masks


def median_frequency_weights(masks, num_classes: int) -> torch.Tensor:
    """SegNet's class balancing: weight_c = median(freq) / freq_c, freq_c = pixels of c / pixels of images with c."""
    pixels = np.zeros(num_classes)
    image_pixels = np.zeros(num_classes)
    for m in masks:
        counts = np.bincount(m[m != IGNORE].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0) * m.size
    freq = pixels / np.maximum(image_pixels, 1)
    weights = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def sample_batch(images, masks, rng, batch: int, crop: int, tile_margin: int):
    """Random crops (crop x crop labels; inputs crop + 2 * tile_margin with real context) with random flips."""
    xs, ys = [], []
    for _ in range(batch):
        k = rng.integers(len(images))
        img, mask = images[k], masks[k]
        if tile_margin:
            img = np.pad(img, ((tile_margin, tile_margin), (tile_margin, tile_margin), (0, 0)), mode="symmetric")
        h, w = mask.shape
        ch, cw = (min(crop, h), min(crop, w)) if crop else (h, w)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        y = mask[top:top + ch, left:left + cw]
        x = img[top:top + ch + 2 * tile_margin, left:left + cw + 2 * tile_margin]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        xs.append(normalize_image(np.ascontiguousarray(x)).transpose(2, 0, 1))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def evaluate(model, images, full_masks, class_names) -> dict:
    num_classes = len(class_names)
    model.eval()
    cm = np.zeros((num_classes, num_classes + 1), np.int64)
    for img, gt in zip(images, full_masks):
        probs = torch.from_numpy(segment(model, img))[None]
        probs = F.interpolate(probs, size=gt.shape, mode="bilinear", align_corners=False)[0]
        cm += confusion_matrix(gt, probs.argmax(0).numpy().astype(np.uint8), num_classes)
    return scores_from_confusion(cm, class_names)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra builder argument, e.g. width=16 for unet (values parsed as YAML scalars)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--scale", type=float, default=1.0, help="downscale factor applied to images and masks")
    ap.add_argument("--crop", type=int, default=0, help="label crop size (0: whole downscaled images)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=12.0, help="wall-clock training budget")
    ap.add_argument("--max-iters", type=int, default=100000)
    ap.add_argument("--class-weights", choices=("none", "median"), default="none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/out/train_zoo")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_ds, eval_ds = open_dataset(args.dataset, args.train_split), open_dataset(args.dataset, args.eval_split)
    k = train_ds.num_classes
    t0 = time.perf_counter()
    train_images, train_masks, _ = load_split(train_ds, args.scale)
    eval_images, _, eval_full = load_split(eval_ds, args.scale)
    load_s = time.perf_counter() - t0

    extra = {key: yaml.safe_load(value) for key, value in (a.split("=", 1) for a in args.model_arg)}
    model = build_model(args.model, num_classes=k, backbone=args.backbone, **extra)
    params = sum(p.numel() for p in model.parameters())
    tile = UNPADDED_MARGIN if isinstance(model, UNet) and not model.padded else 0
    forward = model.forward_tile if tile else model
    if tile and unet_tile_size(args.crop) != args.crop + 2 * tile:
        ap.error(f"--crop {args.crop}: the unpadded U-Net needs crop + 184 to be a valid tile (crop = 16k - 60, "
                 "e.g. 132, 244, 388)")
    weights = median_frequency_weights(train_masks, k) if args.class_weights == "median" else None
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    model.train()
    t0 = time.perf_counter()
    budget = args.minutes * 60
    it, losses = 0, []
    while it < args.max_iters and time.perf_counter() - t0 < budget:
        x, y = sample_batch(train_images, train_masks, rng, args.batch, args.crop, tile)
        out = forward(x)
        loss = F.cross_entropy(out, y, weight=weights, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        it += 1
        if it % 20 == 0:
            print(f"iter {it} loss {np.mean(losses[-20:]):.4f} {time.perf_counter() - t0:.0f}s", flush=True)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = evaluate(model, eval_images, eval_full, train_ds.classes)
    eval_s = time.perf_counter() - t0
    result = {
        "model": args.model, "backbone": args.backbone, "model_args": extra, "parameters": params, "dataset": str(args.dataset),
        "train_split": args.train_split, "train_images": len(train_images), "eval_split": args.eval_split,
        "eval_images": len(eval_images), "scale": args.scale, "crop": args.crop, "batch": args.batch,
        "optimizer": args.optimizer, "lr": args.lr, "class_weights": args.class_weights, "iterations": it,
        "epochs": round(it * args.batch / len(train_images), 2), "final_loss": float(np.mean(losses[-20:])),
        "load_s": round(load_s, 1), "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
        "miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
        "per_class_iou": {name: row["iou"] for name, row in scores["per_class"].items()},
        "class_names": list(train_ds.classes),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.model}_{Path(args.dataset).name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
