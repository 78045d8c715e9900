"""Grid search of the label guides' thresholds on one split (pick on train, then run ``wsss label`` on val).

    python bench/guide_sweep.py --seeds RUN/seeds/cam --saliency RUN/seeds/saliency --dataset D --split train

Every guide gets the same treatment: ``saliency`` over saliency / seed / confident thresholds and min seed share,
``saliency-only`` over the saliency threshold, ``cam`` over the background threshold. Prints one JSON object with
each setting's headline mIoU (255 counted as a miss) and the best setting per guide.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss.datasets import open_dataset  # noqa: E402
from wsss.label.guide import dense_cam_labels, guide_labels, saliency_only_labels  # noqa: E402
from wsss.metrics import confusion_matrix, scores_from_confusion  # noqa: E402
from wsss.folders import StageFolder  # noqa: E402
from wsss.stages.label import saliency_map, seed_evidence  # noqa: E402

GRIDS = {
    "saliency": {"saliency_threshold": (0.3, 0.4, 0.5, 0.6), "seed_threshold": (0.2, 0.4),
                 "confident_threshold": (0.8, 1.01), "min_seed_share": (0.1, 0.3), "fill_single_tag": (False, True)},
    "saliency-only": {"saliency_threshold": (0.3, 0.4, 0.5, 0.6)},
    "cam": {"background_threshold": (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)},
}
FUNCS = {"saliency": guide_labels, "saliency-only": saliency_only_labels, "cam": dense_cam_labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--saliency", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="train")
    args = ap.parse_args()
    seeds, sal_folder = StageFolder.open(args.seeds), StageFolder.open(args.saliency)
    data = open_dataset(args.dataset, args.split)
    inputs = []
    for image_id in data.ids:
        if not (seeds.has(image_id) and sal_folder.has(image_id)):
            continue
        s = data.load(image_id, image=False)
        maps, ids = seed_evidence(seeds, image_id, s.image_labels, s.gt.shape)
        inputs.append((s, maps, ids, saliency_map(sal_folder, image_id, s.gt.shape)))
    out = {"split": args.split, "images": len(inputs), "results": {}, "best": {}}
    for guide, grid in GRIDS.items():
        rows = []
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            cm = np.zeros((data.num_classes, data.num_classes + 1), np.int64)
            for s, maps, ids, sal in inputs:
                if guide == "cam":
                    mask = dense_cam_labels(maps, ids, s.image_labels, **params)
                else:
                    mask = FUNCS[guide](sal, maps, ids, s.image_labels, **params)
                cm += confusion_matrix(s.gt, mask, data.num_classes)
            rows.append({**params, "miou": scores_from_confusion(cm)["miou"]})
        out["results"][guide] = rows
        out["best"][guide] = max(rows, key=lambda r: r["miou"])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
