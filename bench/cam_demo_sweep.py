"""CAM seeds on a generated demo set: train the demo recipe's CAM classifier with overrides, sweep the bg threshold.

    python bench/cam_demo_sweep.py --data DIR NAME [KEY=VALUE ...]      # e.g. epochs=30 seed=1 crop_size=128
    python bench/cam_demo_sweep.py --data DIR --reuse NAME NAME2 scales=1.0,2.0      # inference only
    python bench/cam_demo_sweep.py --data DIR --reuse NAME NAME3 --dense8             # output stride 8 at inference

DIR is a ``wsss make-demo-data DIR --images 60`` folder (trainval is trained and scored). The base settings are the
``cam`` step of pipelines/demo.yaml without its time cap (``max_minutes`` None: epoch-bound, deterministic for a
thread count). ``--dense8`` removes layer3's stride at inference and doubles the dilation of every later 3x3 conv,
so the trained weights are evaluated densely at output stride 8 (same function on a finer grid). Prints one line:
training and inference seconds, final loss, the best mIoU and the sweep (mIoU in %, 255 = miss, as ``wsss eval``).
Runs on one thread (``--threads``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsss.config import CamConfig, build_config
from wsss.datasets import open_dataset
from wsss.metrics import scores_from_confusion
from wsss.recipes import load_recipe
from wsss.runtime import uses_bf16
from wsss.seeds.cam import multiscale_cam, prepare_for_inference, sweep_confusions
from wsss.trainers.cam_classifier import load_classifier, train_classifier


def dense_os8(model: nn.Module) -> nn.Module:
    """The CAM classifier evaluated at output stride 8: layer3's strided convs run at stride 1, every 3x3 conv after
    the strided one (rest of layer3, all of layer4) gets twice its dilation. Changes ``model`` in place."""
    after = False
    for layer in (model.layer3, model.layer4):
        for conv in (m for m in layer.modules() if isinstance(m, nn.Conv2d)):
            if conv.stride == (2, 2):
                conv.stride = (1, 1)
                after = after or conv.kernel_size == (3, 3)
            elif after and conv.kernel_size == (3, 3):
                conv.dilation = (2 * conv.dilation[0], 2 * conv.dilation[1])
                conv.padding = (2 * conv.padding[0], 2 * conv.padding[1])
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="run name (folder under --out)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="CamConfig fields over the demo recipe's")
    ap.add_argument("--data", required=True, help="demo dataset folder")
    ap.add_argument("--out", default="bench/out/cam_demo", help="classifier folders")
    ap.add_argument("--reuse", default=None, metavar="NAME", help="score the classifier of an earlier run")
    ap.add_argument("--dense8", action="store_true", help="output stride 8 at inference")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    step = next(s for s in load_recipe("demo").steps if s.name == "cam")
    values = dict(step.config, max_minutes=None)
    for item in args.overrides:
        key, value = item.split("=", 1)
        values[key] = value
    config = build_config(CamConfig, values)
    dataset = open_dataset(args.data, "trainval")
    out = Path(args.out) / (args.reuse or args.name)
    train_s = 0.0
    if args.reuse is None:
        if out.exists():
            shutil.rmtree(out)
        t0 = time.perf_counter()
        train_classifier(dataset, out, config)
        train_s = time.perf_counter() - t0
    model = load_classifier(out / "classifier.pt", num_classes=dataset.num_classes - 1)
    model = prepare_for_inference(dense_os8(model) if args.dense8 else model, channels_last=config.channels_last != "off")
    bf16 = uses_bf16(config.bf16, torch.device("cpu"))
    thresholds = tuple(round(t, 2) for t in np.arange(0.2, 0.81, 0.05))
    k = dataset.num_classes
    confusion = np.zeros((len(thresholds), k, k + 1), np.int64)
    t0 = time.perf_counter()
    for image_id in dataset.ids:
        sample = dataset.load(image_id, gt=True)
        cams, class_ids = multiscale_cam(model, sample.image, sample.image_labels, scales=config.scales,
                                         flip=config.flip, bf16=bf16, channels_last=config.channels_last != "off")
        cams = cams.astype(np.float16).astype(np.float32)  # as the cam stage stores them
        confusion += sweep_confusions(cams, class_ids, sample.gt, thresholds, k)
    infer_s = time.perf_counter() - t0
    mious = [scores_from_confusion(c)["miou"] for c in confusion]
    best = int(np.argmax(mious))
    last = (out / "train_log.csv").read_text().strip().splitlines()[-1].split(",")
    print(f"{args.name}: {' '.join(args.overrides)}{' dense8' if args.dense8 else ''} | train {train_s:.1f}s "
          f"infer {infer_s:.1f}s loss {last[3]} | best {mious[best]:.2f} @ {thresholds[best]} | "
          + " ".join(f"{t:.2f}:{m:.1f}" for t, m in zip(thresholds, mious)))


if __name__ == "__main__":
    main()
