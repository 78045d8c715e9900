"""GrabCut seed throughput: ``wsss seeds --method grabcut --workers 2`` against a naive single-process loop.

Reference (named ``naive``): one process, for every image of the split read with the same dataset reader, one
``cv2.grabCut`` per box on the full image initialised with the box rectangle (``GC_INIT_WITH_RECT``, 5 iterations),
boxes painted large to small, the mask written as a palette PNG. The measured side is the real command, run as a
child process (start-up and stage bookkeeping included) with its default options. Both run on the same images in
the same call; the ratio is images/s over the reference. Quality of both is printed too (headline mIoU vs GT).

    nice -n 10 /work/venv/bin/python bench/bench_grabcut.py --dataset ../shared/data/voc-dev --split val --images 60

``--with-candidates``: the measured side is ``wsss candidates`` then ``wsss seeds --method grabcut --agree
RUN/candidates/selective`` (the voc_boxes recipe's chain); both ratios are printed, the seeds command alone and the
two commands together.

Without ``--dataset`` a generated demo set (120 images, 128x160) is used.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

import _harness
from wsss.io import write_mask
from wsss.metrics import confusion_matrix, scores_from_confusion


def naive_grabcut(image: np.ndarray, boxes: np.ndarray, iterations: int = 5) -> np.ndarray:
    """The reference: one rectangle-initialised cv2.grabCut per box on the full image, large boxes painted first."""
    h, w = image.shape[:2]
    out = np.zeros((h, w), np.uint8)
    areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    for cls, x0, y0, x1, y1 in boxes[np.argsort(-areas, kind="stable")]:
        if x1 - x0 < 2 or y1 - y0 < 2 or (x1 - x0 >= w and y1 - y0 >= h):  # no background sample: fill
            out[y0:y1, x0:x1] = cls
            continue
        gc = np.zeros((h, w), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(image, gc, (int(x0), int(y0), int(x1 - x0), int(y1 - y0)), bgd, fgd, iterations,
                    cv2.GC_INIT_WITH_RECT)
        out[(gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)] = cls
    return out


def main() -> None:
    p = _harness.parser(__doc__, out="bench/out/grabcut")
    p.add_argument("--with-candidates", action="store_true", help="measure candidates + grabcut --agree")
    args = p.parse_args()
    # a split file with just the first --images ids, in a view of the dataset (symlinks, nothing copied)
    bs = _harness.bench_set(args, prefix="bench_gc_")
    out, root, split, ids, view, dataset = bs.out, bs.root, bs.split, bs.ids, bs.view, bs.dataset
    nboxes = 0

    # naive reference, single process
    cm_naive = np.zeros((dataset.num_classes, dataset.num_classes + 1), np.int64)
    t0 = time.perf_counter()
    for image_id in ids:
        sample = dataset.load(image_id)
        mask = naive_grabcut(sample.image, sample.boxes)
        write_mask(out / "naive" / f"{image_id}.png", mask)
        nboxes += len(sample.boxes)
        if sample.gt is not None:
            cm_naive += confusion_matrix(sample.gt, mask, dataset.num_classes)
    t_naive = time.perf_counter() - t0

    # the command
    t_cands = 0.0
    cmd = [_harness.wsss_exe(), "seeds", "--method", "grabcut", "--dataset", str(view), "--split", "bench", "--run",
           str(out / "run"), "--workers", str(args.workers)]
    if args.with_candidates:
        t_cands = _harness.time_command([_harness.wsss_exe(), "candidates", "--dataset", str(view), "--split", "bench",
                                         "--run", str(out / "run"), "--workers", str(args.workers)])
        cmd += ["--agree", str(out / "run" / "candidates" / "selective")]
    t_ours = _harness.time_command(cmd)

    from wsss.stages.evaluate import evaluate_folder

    q_ours = evaluate_folder(out / "run" / "seeds" / "grabcut", dataset)
    q_naive = scores_from_confusion(cm_naive, dataset.classes)
    n = len(ids)
    print(f"images {n}, boxes {nboxes}, dataset {root} split {split}")
    print(f"naive (1 process, cv2.grabCut rect per box, 5 it.): {t_naive:7.1f} s  {n / t_naive:6.2f} img/s  "
          f"mIoU {q_naive['miou']:.2f}")
    print(f"wsss seeds --method grabcut --workers {args.workers}:      {t_ours:7.1f} s  {n / t_ours:6.2f} img/s  "
          f"mIoU {q_ours['miou']:.2f} (labelled {q_ours['labelled_miou']:.2f}, coverage {q_ours['coverage']:.1f}%)")
    print(f"speed-up over naive: {t_naive / t_ours:.2f}x  (target >= 1.8x)")
    if args.with_candidates:
        print(f"wsss candidates --workers {args.workers}: {t_cands:7.1f} s; candidates + seeds: {t_cands + t_ours:7.1f} s, "
              f"speed-up over naive {t_naive / (t_cands + t_ours):.2f}x")


if __name__ == "__main__":
    main()
