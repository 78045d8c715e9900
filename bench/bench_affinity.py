"""Speed of the affinity walk (``wsss refine --affinity``): its parts per image, and the pairs' dot products by
banded matrix products (:func:`wsss.seeds.affinity.pair_dots`) against the reference named ``gather``: the same
sums computed as ``(flat[:, src] * flat[:, dst]).sum(0)`` on the gathered pair features (what a first version did).

    python bench/bench_affinity.py --cam-stage RUN/seeds/cam --dataset ../shared/data/voc-dev --images 20
    python bench/bench_affinity.py                      # random features on a VOC-sized grid (47 x 63, 1320 ch)

One torch thread (the stage runs one per worker). Prints seconds per image for each part and the ratio
gather / banded; both give the same values (checked, max difference printed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from wsss.seeds import affinity


def _time(fn, repeat: int = 1):
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - start) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cam-stage", default=None, help="a cam stage folder (its classifier.pt and scores/)")
    p.add_argument("--dataset", default=None, help="the dataset the cam stage was made from")
    p.add_argument("--images", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    if args.cam_stage:
        from wsss.datasets import open_dataset
        from wsss.folders import StageFolder
        from wsss.trainers.cam_classifier import load_classifier

        folder = StageFolder.open(args.cam_stage)
        split = folder.info["inputs"]["dataset"]["split"]
        dataset = open_dataset(args.dataset, split)
        model = load_classifier(f"{args.cam_stage}/classifier.pt")
        ids = [i for i in folder.ok_ids if i in set(dataset.ids)][: args.images]
        for image_id in ids:
            sample = dataset.load(image_id)
            cams, _ = folder.scores(image_id)
            feats, t_feat = _time(lambda: affinity.affinity_features(model, sample.image))
            rows.append((feats, cams.astype(np.float32), t_feat))
    else:
        rng = np.random.default_rng(0)
        for _ in range(args.images):
            feats = torch.from_numpy(rng.random((1320, 47, 63), np.float32))
            rows.append((feats, rng.random((2, 375, 500), np.float32), 0.0))
    t = {"features": [], "banded": [], "gather": [], "walk": []}
    worst = 0.0
    for feats, cams, t_feat in rows:
        c, h, w = feats.shape
        flat = F.normalize(feats.reshape(c, -1), dim=0)
        src, dst = affinity.grid_pairs(h, w, 5.0)
        banded, t_band = _time(lambda: affinity.pair_dots(flat, src, dst, width=w, radius=5.0))
        gathered, t_gather = _time(lambda: (flat[:, src] * flat[:, dst]).sum(0))
        worst = max(worst, float((banded - gathered).abs().max()))
        transition = affinity.transition_matrix(feats)
        _, t_walk = _time(lambda: affinity.random_walk(cams, transition, (h, w)))
        for key, value in (("features", t_feat), ("banded", t_band), ("gather", t_gather), ("walk", t_walk)):
            t[key].append(value)
    print(f"{len(rows)} images, grid {rows[0][0].shape[1]}x{rows[0][0].shape[2]} (first), "
          f"{rows[0][0].shape[0]} channels, radius 5, 256 steps, 1 torch thread")
    for key, values in t.items():
        print(f"  {key:9s} {np.mean(values):7.3f} s/image")
    print(f"pair dot products: gather / banded = {np.mean(t['gather']) / np.mean(t['banded']):.1f}x "
          f"(max difference {worst:.2e})")


if __name__ == "__main__":
    main()
