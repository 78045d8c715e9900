"""Candidate recall of a candidates stage folder: share of GT objects with a candidate of mask IoU >= 0.5 / 0.7.

Objects are counted two ways: (a) per XML box, the GT pixels of the box's class inside the box; (b) per connected
component (8-connected, >= 100 px) of each class of the GT mask. Also prints candidates per image and the mean IoU of
the candidate that the initial selection picks for each box (against the object of (a)).

    nice -n 10 python bench/boxsup_recall.py RUN/candidates/selective --dataset DATA --split train
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from scipy import ndimage

    from wsss.config import BoxSupConfig
    from wsss.datasets import open_dataset
    from wsss.label.boxsup import initial_selection
    from wsss.stages.candidates import read_candidates
    from wsss.folders import StageFolder

    ap = argparse.ArgumentParser()
    ap.add_argument("stage")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    ds = open_dataset(args.dataset, args.split)
    folder = StageFolder.open(args.stage)
    ids = [i for i in ds.ids if folder.has(i)]
    if args.limit:
        ids = ids[:args.limit]
    d = BoxSupConfig()
    box_best, cc_best, picked, counts = [], [], [], []
    t0 = time.perf_counter()
    for image_id in ids:
        sample = ds.load(image_id, image=False)
        cands = read_candidates(folder.path / "candidates" / f"{image_id}.npz")
        counts.append(len(cands))
        sel = initial_selection(cands, sample.boxes, tie_tolerance=d.tie_tolerance,
                                min_fit=d.min_fit) if len(sample.boxes) else []
        for (cls, x0, y0, x1, y1), m in zip(sample.boxes.tolist(), list(sel)):
            obj = np.zeros(sample.gt.shape, bool)
            obj[y0:y1, x0:x1] = sample.gt[y0:y1, x0:x1] == cls
            if obj.any():
                ious = cands.mask_ious(obj)
                box_best.append(ious.max())
                # a box without a fitting candidate (-1) is box-filled: its IoU is the object's share of the box
                picked.append(ious[m] if m >= 0 else obj.sum() / ((x1 - x0) * (y1 - y0)))
        for cls in np.unique(sample.gt):
            if cls in (0, 255):
                continue
            comps, n = ndimage.label(sample.gt == cls, structure=np.ones((3, 3)))
            sizes = np.bincount(comps.reshape(-1))
            for k in range(1, n + 1):
                if sizes[k] >= 100:
                    cc_best.append(cands.mask_ious(comps == k).max())
    box_best, cc_best = np.array(box_best), np.array(cc_best)
    print(f"{len(ids)} images, {np.mean(counts):.0f} candidates per image (median {np.median(counts):.0f}), "
          f"{time.perf_counter() - t0:.1f}s")
    print(f"box objects: {len(box_best)}  recall@0.5 {100 * (box_best >= 0.5).mean():.1f}%  "
          f"recall@0.7 {100 * (box_best >= 0.7).mean():.1f}%  mean best IoU {box_best.mean():.3f}")
    print(f"connected components: {len(cc_best)}  recall@0.5 {100 * (cc_best >= 0.5).mean():.1f}%  "
          f"recall@0.7 {100 * (cc_best >= 0.7).mean():.1f}%  mean best IoU {cc_best.mean():.3f}")
    print(f"initial selection (tie_tolerance {d.tie_tolerance:g}, min_fit {d.min_fit:g}): mean IoU of the picked "
          f"candidate (or the box fill of a box without a fitting one) {np.mean(picked):.3f}")


if __name__ == "__main__":
    main()
