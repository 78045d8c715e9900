"""Model zoo table: paper, parameter count and CPU forward time at 321x321 (batch 1) of every registered model.

Each model is built with its paper's backbone (random init), put in eval mode and timed with
``torch.inference_mode()``: all models are built first and warmed up once, then ``--runs`` rounds time every model in
turn (interleaved, so a burst of load from other processes on a shared machine hits all models alike); the table has
the median wall time and the median process CPU time (``time.process_time``, all threads: the compute cost, less
sensitive to other processes than wall time). The last column is the CPU time relative to DeepLab-v2 (ResNet-101),
the project's default model, measured in the same run.

    nice -n 10 python bench/bench_models.py --runs 3 --threads 2

Prints a Markdown table (pasted under "Model zoo" in README.md) and writes it to bench/out/bench_models.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss.models import MODELS, build_model  # noqa: E402

PAPERS = {
    "deeplabv2": "Chen et al., DeepLab v2, TPAMI 2018",
    "fcn32s": "Long, Shelhamer & Darrell, FCN, CVPR 2015",
    "fcn16s": "Long, Shelhamer & Darrell, FCN, CVPR 2015",
    "fcn8s": "Long, Shelhamer & Darrell, FCN, CVPR 2015",
    "segnet": "Badrinarayanan, Kendall & Cipolla, SegNet, TPAMI 2017",
    "segnet_basic": "Badrinarayanan, Kendall & Cipolla, SegNet, TPAMI 2017",
    "unet": "Ronneberger, Fischer & Brox, U-Net, MICCAI 2015",
    "deeplabv1": "Chen et al., DeepLab (LargeFOV), ICLR 2015",
    "deeplabv3plus": "Chen et al., DeepLab v3+, ECCV 2018",
    "pspnet": "Zhao et al., PSPNet, CVPR 2017",
    "parsenet": "Liu, Rabinovich & Berg, ParseNet, ICLR-W 2016",
    "refinenet": "Lin et al., RefineNet, CVPR 2017",
}


def backbone_of(name: str) -> str:
    import inspect

    return str(inspect.signature(MODELS[name]).parameters["backbone"].default)


def time_forward(model, x) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward pass."""
    with torch.inference_mode():
        t0, c0 = time.perf_counter(), time.process_time()
        model(x)
        return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=321)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=21)
    ap.add_argument("--models", nargs="*", default=None, help="subset (default: all registered)")
    ap.add_argument("--out", default="bench/out/bench_models.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    names = args.models or list(MODELS)
    if "deeplabv2" not in names:
        names = ["deeplabv2", *names]
    models = {}
    for name in names:
        models[name] = build_model(name, num_classes=args.num_classes).eval()
        time_forward(models[name], x)  # warm-up
    walls = {name: [] for name in names}
    cpus = {name: [] for name in names}
    for round_ in range(args.runs):
        for name, model in models.items():
            wall, cpu = time_forward(model, x)
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"round {round_ + 1} {name}: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU", flush=True)
    reference = statistics.median(cpus["deeplabv2"])
    lines = [
        f"| model (`--model`) | paper | backbone | parameters | forward {args.size}x{args.size}: wall (ms) | "
        "CPU time (ms) | CPU time / DeepLab-v2 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        lines.append(f"| `{name}` | {PAPERS.get(name, '?')} | {backbone_of(name)} | {params / 1e6:.1f} M | "
                     f"{wall * 1000:.0f} | {cpu * 1000:.0f} | {cpu / reference:.2f} |")
    table = "\n".join(lines)
    print()
    print(f"batch 1, {args.threads} threads, median of {args.runs} interleaved rounds after one warm-up, torch "
          f"{torch.__version__}, {args.num_classes} classes, random init, eval mode, inference_mode")
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
