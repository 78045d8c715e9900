"""Label quality of one BoxSup re-selection for several (lambda, top_k) settings from one trained network.

The network's probabilities are computed once per image and every setting re-selects from them, so a sweep costs
one prediction pass. Prints mIoU (vs GT) of the re-selected labels per setting, with the initial selection and the
network's own arg-max on the same images for reference.

    nice -n 10 python bench/boxsup_sweep.py --dataset DATA --split train --candidates RUN/candidates/selective \
        --checkpoint RUN/train/boxsup_r1/checkpoint.pt --lambdas 0,0.5,1,2 --top-k 1,3,5
    nice -n 10 python bench/boxsup_sweep.py ... --oracle 0.3     (GT-derived probabilities: the update's ceiling)

The initial selection uses the boxes guide's defaults (``--tie``, ``--min-fit``; boxes without a fitting candidate
are box-filled and never re-selected); ``--margins`` adds the "keep the initial candidate unless another costs at
least MARGIN less" rule (0: plain BoxSup). ``--every 4 --offset 3`` sweeps a quarter of the split spread over it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def oracle_probs(gt: np.ndarray, num_classes: int, eps: float) -> np.ndarray:
    """(K, H, W) probabilities of a 'network' that knows the GT: 1 - eps on the GT class, the rest spread evenly."""
    probs = np.full((num_classes, *gt.shape), eps / (num_classes - 1), np.float32)
    valid = gt != 255
    probs[gt[valid].astype(np.int64), np.nonzero(valid)[0], np.nonzero(valid)[1]] = 1 - eps
    probs[:, ~valid] = 1.0 / num_classes
    return probs


def main() -> None:
    import torch

    from wsss.config import BoxSupConfig
    from wsss.datasets import open_dataset
    from wsss.label.boxsup import image_rng, initial_selection, labels_from_selection, update_selection
    from wsss.metrics import confusion_matrix, scores_from_confusion
    from wsss.models.inference import segment
    from wsss.stages.candidates import read_candidates
    from wsss.folders import StageFolder
    from wsss.stages.predict import load_trained_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--checkpoint", default=None, help="a wsss train checkpoint (or give --oracle)")
    ap.add_argument("--oracle", type=float, default=None, metavar="EPS",
                    help="diagnostic upper bound: instead of a network, probabilities from the GT mask (1 - EPS on "
                         "the GT class, EPS spread over the others; GT 255 pixels uniform)")
    ap.add_argument("--lambdas", default="0,0.5,1,2")
    ap.add_argument("--top-k", default="1,3,5")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--every", type=int, default=1, help="every N-th image of the split ...")
    ap.add_argument("--offset", type=int, default=0, help="... starting at this one")
    ap.add_argument("--tie", type=float, default=BoxSupConfig.tie_tolerance, help="initial selection tie tolerance")
    ap.add_argument("--min-fit", type=float, default=BoxSupConfig.min_fit, help="as --min-fit of the boxes guide")
    ap.add_argument("--margins", default="0", help="comma-separated margins (0: plain BoxSup update)")
    ap.add_argument("--balanced", action="store_true", help="also score the balanced cross-entropy variant")
    ap.add_argument("--agnostic", default="0", help="comma-separated 0/1: class-agnostic network term (1 - p_0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scales", default="1.0", help="prediction scales, as --predict-scales of the boxes guide")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = open_dataset(args.dataset, args.split)
    folder = StageFolder.open(args.candidates)
    if (args.checkpoint is None) == (args.oracle is None):
        ap.error("give --checkpoint or --oracle")
    model = load_trained_model(args.checkpoint, "cpu")[0] if args.checkpoint else None
    lambdas = [float(v) for v in args.lambdas.split(",")]
    ks = [int(v) for v in args.top_k.split(",")]
    margins = [float(v) for v in args.margins.split(",")]
    agn = [bool(int(v)) for v in args.agnostic.split(",")]
    k_classes = ds.num_classes
    cms = {key: np.zeros((k_classes, k_classes + 1), np.int64)
           for key in [("initial",), ("network",)] + [(lam, k, bal, mg, ag) for lam in lambdas for k in ks
                                                     for bal in ((False, True) if args.balanced else (False,))
                                                     for mg in margins for ag in agn]}
    ids = (ds.ids[:args.limit] if args.limit else ds.ids)[args.offset::args.every]
    t0 = time.perf_counter()
    for image_id in ids:
        sample = ds.load(image_id, image=model is not None)
        cands = read_candidates(folder.path / "candidates" / f"{image_id}.npz")
        if model is not None:
            probs = segment(model, sample.image, scales=[float(v) for v in args.scales.split(",")])
        else:
            probs = oracle_probs(sample.gt, k_classes, args.oracle)
        cms[("network",)] += confusion_matrix(sample.gt, probs.argmax(0).astype(np.uint8), k_classes)
        if not len(sample.boxes):
            continue
        first = initial_selection(cands, sample.boxes, tie_tolerance=args.tie, min_fit=args.min_fit)
        init = labels_from_selection(cands, sample.boxes, first)
        cms[("initial",)] += confusion_matrix(sample.gt, init, k_classes)
        for lam, k, bal, mg, ag in [key for key in cms if len(key) == 5]:
            sel, _ = update_selection(cands, sample.boxes, probs, lam=lam, top_k=k, balanced=bal,
                                      min_fit=args.min_fit, previous=first, margin=mg, agnostic=ag,
                                      rng=image_rng(0, 1, image_id))
            cms[(lam, k, bal, mg, ag)] += confusion_matrix(sample.gt, labels_from_selection(cands, sample.boxes, sel),
                                                   k_classes)
    print(f"{len(ids)} images of {args.dataset} {args.split} [{args.offset}::{args.every}], "
          f"{time.perf_counter() - t0:.0f}s")
    for key, cm in cms.items():
        name = key[0] if len(key) == 1 else (f"lambda={key[0]:g} top_k={key[1]}{' balanced' if key[2] else ''}"
                                             f"{f' margin={key[3]:g}' if key[3] else ''}"
                                             f"{' agnostic' if key[4] else ''}")
        sc = scores_from_confusion(cm, ds.classes)
        print(f"{name:<40} mIoU {sc['miou']:6.2f}  pixel acc. {sc['pixel_accuracy']:5.1f}  "
              f"prec {sc['mean_precision']:5.1f}  rec {sc['mean_recall']:5.1f}")


if __name__ == "__main__":
    main()
