"""Label quality of BoxSup's initial selection rules (no network), beside box fill, on a slice of a split.

Every rule is computed from the same candidates per image, so a grid costs one pass over the images. Prints mIoU
(vs GT) and the share of 255 pixels per setting; pick rules on a slice that is not the one the labels are scored on.

    nice -n 10 python bench/boxsup_initial.py --dataset DATA --split train --candidates RUN/candidates/selective \
        --every 4 --offset 3 --tie 0,0.05,0.1 --min-fit 0,0.5,0.6,0.7 --poor-fit fill,ignore \
        --box-rest background,ignore
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
import time

import numpy as np


def main() -> None:
    from wsss.datasets import open_dataset
    from wsss.label.boxsup import initial_selection, labels_from_selection
    from wsss.metrics import confusion_matrix, scores_from_confusion
    from wsss.seeds.grabcut import box_fill
    from wsss.stages.candidates import read_candidates
    from wsss.folders import StageFolder

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--start", type=int, default=0, help="first image (index in the split's id list)")
    ap.add_argument("--stop", type=int, default=0, help="one past the last image (0: to the end)")
    ap.add_argument("--every", type=int, default=1, help="then every N-th image of that range ...")
    ap.add_argument("--offset", type=int, default=0, help="... starting at this one (--every 4 --offset 3: a "
                                                          "quarter spread over the split)")
    ap.add_argument("--tie", default="0.05")
    ap.add_argument("--min-fit", default="0")
    ap.add_argument("--poor-fit", default="fill")
    ap.add_argument("--box-rest", default="background")
    args = ap.parse_args()
    ds = open_dataset(args.dataset, args.split)
    folder = StageFolder(Path(args.candidates))  # a folder still being written works too
    ids = ds.ids[args.start:args.stop or None][args.offset::args.every]
    settings = list(itertools.product([float(v) for v in args.tie.split(",")],
                                      [float(v) for v in args.min_fit.split(",")],
                                      args.poor_fit.split(","), args.box_rest.split(",")))
    k = ds.num_classes
    cms = {key: np.zeros((k, k + 1), np.int64) for key in ["box fill"] + settings}
    t0 = time.perf_counter()
    for image_id in ids:
        sample = ds.load(image_id, image=False)
        if not len(sample.boxes):
            continue
        cands = read_candidates(folder.path / "candidates" / f"{image_id}.npz")
        cms["box fill"] += confusion_matrix(sample.gt, box_fill(sample.gt.shape, sample.boxes), k)
        selections = {}
        for tie, fit, poor, rest in settings:
            if (tie, fit) not in selections:
                selections[tie, fit] = initial_selection(cands, sample.boxes, tie_tolerance=tie, min_fit=fit)
            labels = labels_from_selection(cands, sample.boxes, selections[tie, fit], poor_fit=poor, box_rest=rest)
            cms[tie, fit, poor, rest] += confusion_matrix(sample.gt, labels, k)
    print(f"{len(ids)} images of {args.dataset} {args.split} [{args.start}:{args.stop or len(ds.ids)}]"
          f"[{args.offset}::{args.every}], "
          f"{time.perf_counter() - t0:.0f}s")
    for key, cm in cms.items():
        name = key if isinstance(key, str) else f"tie={key[0]:g} min_fit={key[1]:g} poor_fit={key[2]} box_rest={key[3]}"
        sc = scores_from_confusion(cm, ds.classes)
        print(f"{name:<60} mIoU {sc['miou']:6.2f}  ignored {sc['ignore_percent']:5.1f}%  "
              f"prec {sc['mean_precision']:5.1f}  rec {sc['mean_recall']:5.1f}")


if __name__ == "__main__":
    main()
