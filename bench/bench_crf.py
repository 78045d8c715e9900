"""Dense-CRF refinement throughput: ``wsss refine --crf --workers 2`` against a naive CRF over all 21 labels.

Reference (named ``naive``): one process; for every image, the input stage's mask read through its manifest, a
unary from the hard labels over **all** of the dataset's labels (``pydensecrf.utils.unary_from_labels``,
confidence 0.7), one ``DenseCRF2D`` over the **whole image** with the same pairwise terms (DeepLab preset) and 10
mean-field iterations, arg-max, the mask written as a palette PNG. The measured side is the real command, run as a
child process (start-up and stage bookkeeping included): by default the labels present only, the unary from the
input's scores/, the box prior with one CRF per box crop. Both run in the same call on the same input stage (made
first, untimed, with ``wsss seeds --method grabcut``); the ratio is images/s over the reference. Quality of both is
printed too.

    nice -n 10 /work/venv/bin/python bench/bench_crf.py --dataset ../shared/data/voc-dev --split val --images 60

Without ``--dataset`` a generated demo set (120 images, 128x160) is used.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np

import _harness
from wsss.crf import crf_params
from wsss.io import read_image, write_mask
from wsss.metrics import confusion_matrix, scores_from_confusion
from wsss.folders import StageFolder


def naive_crf(image: np.ndarray, mask: np.ndarray, num_labels: int, iterations: int = 10) -> np.ndarray:
    """The reference: all labels, whole image, unary from the hard mask (255 = unsure)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = mask.shape
    labels = np.where(mask == 255, 0, mask.astype(np.int32) + 1)  # 0 = unsure for zero_unsure
    unary = unary_from_labels(labels, num_labels, gt_prob=0.7, zero_unsure=True)
    crf = dcrf.DenseCRF2D(w, h, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    p = crf_params("deeplab")
    crf.addPairwiseGaussian(sxy=p["sxy_gaussian"], compat=p["compat_gaussian"])
    crf.addPairwiseBilateral(sxy=p["sxy"], srgb=p["srgb"], rgbim=np.array(image, np.uint8, order="C"),
                             compat=p["compat"])
    q = np.asarray(crf.inference(iterations)).reshape(num_labels, h, w)
    return q.argmax(0).astype(np.uint8)


def main() -> None:
    parser = _harness.parser(__doc__, out="bench/out/crf")
    parser.add_argument("--refine-options", default="", help="extra options of wsss refine --crf, e.g. "
                                                             "'--relabel ignore'")
    parser.add_argument("--with-candidates", action="store_true", help="the input seeds are made with wsss "
                                                                        "candidates + grabcut --agree (voc_boxes)")
    args = parser.parse_args()

    bs = _harness.bench_set(args, prefix="bench_crf_")
    out, root, split, ids, view, dataset = bs.out, bs.root, bs.split, bs.ids, bs.view, bs.dataset
    wsss = _harness.wsss_exe()
    run = out / "run"
    agree = []
    if args.with_candidates:
        subprocess.run([wsss, "candidates", "--dataset", str(view), "--split", "bench", "--run", str(run),
                        "--workers", str(args.workers)], check=True, stdout=subprocess.DEVNULL)
        agree = ["--agree", str(run / "candidates" / "selective")]
    subprocess.run([wsss, "seeds", "--method", "grabcut", "--dataset", str(view), "--split", "bench", "--run",
                    str(run), "--workers", str(args.workers), *agree], check=True, stdout=subprocess.DEVNULL)
    seeds = StageFolder.open(run / "seeds" / "grabcut")

    cm_naive = np.zeros((dataset.num_classes, dataset.num_classes + 1), np.int64)
    t0 = time.perf_counter()
    for image_id in ids:
        image = read_image(dataset.image_path(image_id))
        mask = naive_crf(image, seeds.mask(image_id), dataset.num_classes)
        write_mask(out / "naive" / f"{image_id}.png", mask)
        gt = dataset.load_gt(image_id)
        if gt is not None:
            cm_naive += confusion_matrix(gt, mask, dataset.num_classes)
    t_naive = time.perf_counter() - t0

    cmd = [wsss, "refine", "--crf", "--input", str(run / "seeds" / "grabcut"), "--dataset", str(view), "--run",
           str(run), "--workers", str(args.workers), *args.refine_options.split()]
    t_ours = _harness.time_command(cmd)

    from wsss.stages.evaluate import evaluate_folder

    q_ours = evaluate_folder(run / "refined" / "crf", dataset)
    q_naive = scores_from_confusion(cm_naive, dataset.classes)
    n = len(ids)
    print(f"images {n}, dataset {root} split {split}, input: wsss seeds --method grabcut {' '.join(agree)}")
    print(f"naive (1 process, {dataset.num_classes} labels, whole image, unary from labels): {t_naive:7.1f} s  "
          f"{n / t_naive:6.2f} img/s  mIoU {q_naive['miou']:.2f}")
    print(f"wsss refine --crf --workers {args.workers} {args.refine_options}: {t_ours:7.1f} s  {n / t_ours:6.2f} "
          f"img/s  mIoU {q_ours['miou']:.2f}")
    print(f"speed-up over naive: {t_naive / t_ours:.2f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
