"""Parameter choice for the GrabCut box seeds (and the CRF on their band) on a slice of a split: train only.

Usage (what bench/RESULTS.md, issue 3, reports; one process, ``WORKERS=2`` for two):

    nice -n 10 /work/venv/bin/python bench/grabcut_sweep.py train 0:100 '{"core_fraction": 0.5, "margin": 1.0}' \
        '[{"relabel": "ignore"}, {"preset": "psa"}]'

Arguments: split, slice ``start:stop`` of its ids, the keyword arguments of
:func:`wsss.seeds.grabcut.grabcut_seeds` as JSON, optionally a JSON list of :func:`wsss.crf.crf_refine` keyword
sets (``"unary": "masks"`` uses the hard mask instead of the scores). Prints headline mIoU, labelled mIoU and
coverage of the seeds, of the seeds with their 255 band filled by the arg-max of the scores, and of each CRF.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from wsss.crf import crf_refine
from wsss.datasets import open_dataset
from wsss.metrics import confusion_matrix, scores_from_confusion
from wsss.seeds.grabcut import grabcut_seeds

VOC_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-dev"
ARGS = sys.argv[1:]
DATASET = open_dataset(VOC_DEV, ARGS[0]) if ARGS else None


def one(args):
    image_id, params, crfs = args
    s = DATASET.load(image_id)
    m, sc, ci = grabcut_seeds(s.image, s.boxes, **params)
    filled = np.where(m == 255, ci[sc.argmax(0)], m).astype(np.uint8)
    out = [confusion_matrix(s.gt, m, DATASET.num_classes), confusion_matrix(s.gt, filled, DATASET.num_classes)]
    for c in crfs:
        c = dict(c)
        from_scores = c.pop("unary", "scores") == "scores"
        r = crf_refine(s.image, mask=m, scores=sc if from_scores else None, class_ids=ci if from_scores else None,
                       image_labels=s.image_labels, boxes=s.boxes, **c)
        out.append(confusion_matrix(s.gt, r, DATASET.num_classes))
    return out


def main() -> None:
    if len(ARGS) < 3:
        sys.exit(__doc__)
    start, stop = (int(x) for x in ARGS[1].split(":"))
    params = json.loads(ARGS[2])
    crfs = json.loads(ARGS[3]) if len(ARGS) > 3 else []
    t0 = time.time()
    workers = int(os.environ.get("WORKERS", "1"))  # one core by default (shared machine)
    with ProcessPoolExecutor(workers) as pool:
        res = list(pool.map(one, [(i, params, crfs) for i in DATASET.ids[start:stop]], chunksize=4))
    for k, name in enumerate(["seeds", "seeds + arg-max fill"] + [json.dumps(c) for c in crfs]):
        q = scores_from_confusion(sum(r[k] for r in res), DATASET.classes)
        print(f"{json.dumps(params)} {name}: mIoU {q['miou']:.2f} labelled {q['labelled_miou']:.2f} "
              f"coverage {q['coverage']:.1f}")
        print("   ", " ".join(f"{c[:5]}:{v['iou']:.0f}" for c, v in q["per_class"].items()))
    print(f"wall {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
