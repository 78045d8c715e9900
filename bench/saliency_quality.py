"""Saliency maps against the GT foreground (non-background pixels): MAE and F-measure (beta^2 = 0.3).

    python bench/saliency_quality.py RUN/seeds/saliency --dataset ../shared/data/voc-dev --split val

Scores the stage's maps (``scores/<id>.npz``) next to two trivial maps measured on the same images: a constant map
(the split's mean foreground share) and a centre prior (a Gaussian bump, sigma = 1/4 of each side). With
``--targets`` it also scores the stage's cached GrabCut training targets (``targets/<id>.png``, 255 -> 0.5) on
the training split they were made for. ``--reference STAGE`` scores another stage's masks on the same images as a
binary map (labelled object = 1, background = 0, 255 = 0.5), e.g. box GrabCut seeds, the box-supervised reference
the tag-only saliency is compared with:

    python bench/saliency_quality.py RUN/seeds/saliency --dataset D --split val --reference RUN_VAL/seeds/grabcut
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss.datasets import open_dataset  # noqa: E402
from wsss.folders import StageFolder  # noqa: E402
from wsss.io import read_mask  # noqa: E402
from wsss.seeds.saliency import SaliencyQuality  # noqa: E402


def centre_prior(shape) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-0.5 * (((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", help="saliency stage folder")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--threshold", type=float, default=0.5, help="binarisation threshold reported as f_at_threshold")
    ap.add_argument("--reference", default=None, metavar="STAGE",
                    help="also score this mask stage folder's masks as a binary saliency map on the same images")
    ap.add_argument("--targets", default=None, metavar="SPLIT",
                    help="also score the stage's cached training targets on this split")
    args = ap.parse_args()
    folder = StageFolder.open(args.stage)
    dataset = open_dataset(args.dataset, args.split)
    gts = {i: dataset.load_gt(i) for i in dataset.ids if folder.has(i)}
    fg_share = float(np.mean([(g[g != 255] > 0).mean() for g in gts.values()]))
    learned, constant, centre = (SaliencyQuality(threshold=args.threshold) for _ in range(3))
    for image_id, gt in gts.items():
        scores, _ = folder.scores(image_id)
        learned.add(scores[0], gt)
        constant.add(np.full(gt.shape, fg_share, np.float32), gt)
        centre.add(centre_prior(gt.shape), gt)
    out = {"stage": args.stage, "split": args.split, "images": len(gts), "saliency": learned.result(),
           "trivial_constant": constant.result(), "trivial_centre_prior": centre.result()}
    if args.reference:
        ref_folder = StageFolder.open(args.reference)
        q = SaliencyQuality(threshold=args.threshold)
        for image_id, gt in gts.items():
            if not ref_folder.has(image_id):
                continue
            mask = ref_folder.mask(image_id)
            binary = np.where(mask == 255, 0.5, (mask > 0).astype(np.float32)).astype(np.float32)
            q.add(binary, gt)
        out["reference"] = {"stage": args.reference, **q.result()}
    if args.targets:
        train = open_dataset(args.dataset, args.targets)
        q = SaliencyQuality(threshold=args.threshold)
        for image_id in train.ids:
            path = Path(args.stage) / "targets" / f"{image_id}.png"
            if not path.exists():
                continue
            gt = train.load_gt(image_id)
            target = read_mask(path).astype(np.float32)
            target[target == 255] = 0.5
            q.add(cv2.resize(target, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST), gt)
        out["grabcut_targets"] = {"split": args.targets, **q.result()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
