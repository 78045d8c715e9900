"""Training throughput of ``wsss train``'s loop against a naive fp32 contiguous reference loop.

Same model (same seed and architecture), same batch, same crop, same augmented samples in the same order.

1. **interleaved** (the headline ratio): one process holds both models and alternates one reference step and one
   :func:`wsss.trainers.segmentation.train_step` step (the loop's own step, with channels_last / bf16 autocast as
   ``resolve_speed('auto')`` picks them for this machine) on the same batch, swapping the order every iteration. On
   a shared machine the load changes by the minute; alternating step by step makes both variants see the same
   load. Medians of wall time and of process CPU time per step, first step left out.
2. **end to end** (one subprocess per variant, ``--rounds`` rounds): the reference as a plain loop (samples prepared
   in the main process, fp32, contiguous) against :func:`wsss.trainers.segmentation.train_model` itself (DataLoader worker,
   channels_last, bf16); wall time over iterations 2..N and the peak memory of each process (max RSS on CPU,
   ``torch.cuda.max_memory_allocated`` on GPU).

Prints one line per measurement and the ratios (target >= 1.3x); writes JSON to ``--out``.

    nice -n 10 python bench/bench_train.py --backbone resnet18 --crop 225 --batch 4 --iterations 6 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _setup(args):
    import torch

    from wsss.datasets import make_demo_data, open_dataset
    from wsss.models import build_model
    from wsss.pairs import MaskPairs

    torch.set_num_threads(args.threads)
    if args.dataset:
        dataset = open_dataset(args.dataset, args.split)
    else:
        root = Path(args.data_dir)
        if not (root / "ImageSets/Segmentation/train.txt").exists():
            make_demo_data(root, 24, size=(240, 320), seed=1)
        dataset = open_dataset(root, "train")
    pairs = MaskPairs(dataset, None, crop_size=args.crop)
    torch.manual_seed(0)
    model = build_model("deeplabv2", num_classes=dataset.num_classes, backbone=args.backbone)
    return pairs, model


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(args) -> dict:
    import copy
    import statistics

    import torch

    from wsss.pairs import ResumableSampler
    from wsss.runtime import pick_device, resolve_speed
    from wsss.trainers.segmentation import make_optimizer, train_step

    pairs, model = _setup(args)
    device = pick_device(args.device)
    speed = {"channels_last": resolve_speed(args.channels_last, device, "channels_last"),
             "bf16": resolve_speed(args.bf16, device, "bf16")}
    models = {"reference": model.to(device).train(), "wsss": copy.deepcopy(model).to(device).train()}
    if speed["channels_last"]:
        models["wsss"].to(memory_format=torch.channels_last)
    opts = {k: make_optimizer(m, lr=1e-3, head_lr_mult=10.0, momentum=0.9, weight_decay=5e-4)
            for k, m in models.items()}
    settings = {"reference": {"channels_last": False, "bf16": False}, "wsss": speed}
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    stream = iter(ResumableSampler(len(pairs), batch_size=args.batch, iterations=args.iterations + 1))
    for it in range(args.iterations + 1):
        items = [pairs[next(stream)] for _ in range(args.batch)]
        images = torch.stack([a for a, _ in items])
        masks = torch.stack([b for _, b in items])
        for name in (("reference", "wsss") if it % 2 == 0 else ("wsss", "reference")):
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(models[name], opts[name], images, masks, device=device, **settings[name])
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        print(f"  step {it}: reference {wall['reference'][-1]:.2f}s, wsss {wall['wsss'][-1]:.2f}s", flush=True)
    out = {"speed": speed, "device": str(device)}
    for name in models:
        out[name] = {"wall_s_per_step": statistics.median(wall[name][1:]),
                     "cpu_s_per_step": statistics.median(cpu[name][1:]),
                     "images_per_second": args.batch / statistics.median(wall[name][1:])}
    out["ratio_wall"] = out["reference"]["wall_s_per_step"] / out["wsss"]["wall_s_per_step"]
    out["ratio_cpu"] = out["reference"]["cpu_s_per_step"] / out["wsss"]["cpu_s_per_step"]
    return out


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    from wsss.pairs import ResumableSampler
    from wsss.runtime import pick_device, resolve_speed
    from wsss.trainers.segmentation import make_optimizer, train_model

    pairs, model = _setup(args)
    device = pick_device(args.device)
    if args.variant == "reference":
        model.to(device).train()
        optimizer = make_optimizer(model, lr=1e-3, head_lr_mult=10.0, momentum=0.9, weight_decay=5e-4)
        stream = iter(ResumableSampler(len(pairs), batch_size=args.batch, iterations=args.iterations))
        t1 = None
        for it in range(args.iterations):
            items = [pairs[next(stream)] for _ in range(args.batch)]
            images = torch.stack([a for a, _ in items]).to(device)
            masks = torch.stack([b for _, b in items]).to(device)
            loss = F.cross_entropy(model(images), masks, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if it == 0:
                t1 = time.perf_counter()
        seconds = time.perf_counter() - t1
        speed = {"channels_last": False, "bf16": False}
    else:
        speed = {"channels_last": resolve_speed(args.channels_last, device, "channels_last"),
                 "bf16": resolve_speed(args.bf16, device, "bf16")}
        with tempfile.TemporaryDirectory() as tmp:
            train_model(model, pairs, Path(tmp), iterations=args.iterations, batch_size=args.batch, lr=1e-3,
                        device=device, loader_workers=args.loader_workers, checkpoint_every=10 ** 9, log_every=1,
                        progress=False, **speed)
            rows = (Path(tmp) / "log.csv").read_text().splitlines()[1:]
            secs = [float(r.split(",")[4]) for r in rows]
            seconds = secs[-1] - secs[0]
    images = (args.iterations - 1) * args.batch
    return {"variant": args.variant, "images_per_second": images / seconds, "seconds": seconds,
            "peak_memory_mb": round(_peak_memory_mb(device), 1), "device": str(device), **speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--crop", type=int, default=225)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mode", default="both", choices=("both", "interleaved", "end-to-end"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--bf16", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--dataset", default=None, help="a dataset folder (default: a generated 240x320 demo set)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--data-dir", default="bench/out/bench_train_data")
    parser.add_argument("--out", default="bench/out/bench_train.json")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)), flush=True)
        return
    report = {"args": vars(args)}
    if args.mode in ("both", "interleaved"):
        print(f"interleaved: deeplabv2/{args.backbone} batch {args.batch} crop {args.crop}, "
              f"{args.iterations} timed steps each", flush=True)
        inter = interleaved(args)
        report["interleaved"] = inter
        print(f"interleaved: reference {inter['reference']['images_per_second']:.3f} img/s "
              f"({inter['reference']['wall_s_per_step']:.2f} s/step, {inter['reference']['cpu_s_per_step']:.2f} "
              f"CPU s/step), wsss {inter['wsss']['images_per_second']:.3f} img/s "
              f"({inter['wsss']['wall_s_per_step']:.2f} s/step, {inter['wsss']['cpu_s_per_step']:.2f} CPU s/step) "
              f"channels_last={inter['speed']['channels_last']} bf16={inter['speed']['bf16']}: "
              f"ratio {inter['ratio_wall']:.2f}x wall, {inter['ratio_cpu']:.2f}x CPU time (target >= 1.3x)",
              flush=True)
    if args.mode in ("both", "end-to-end"):
        results = []
        forwarded = [a for a in sys.argv[1:]]
        for round_ in range(args.rounds):
            for variant in ("reference", "wsss"):
                proc = subprocess.run([sys.executable, __file__, *forwarded, "--variant", variant],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["round"] = round_
                results.append(res)
                print(f"end to end, round {round_} {variant:<9} {res['images_per_second']:7.3f} img/s  peak "
                      f"{res['peak_memory_mb']:8.1f} MB  channels_last={res['channels_last']} bf16={res['bf16']} "
                      f"({res['device']})", flush=True)
        ref = statistics.median(r["images_per_second"] for r in results if r["variant"] == "reference")
        ours = statistics.median(r["images_per_second"] for r in results if r["variant"] == "wsss")
        print(f"end to end: reference {ref:.3f} img/s, wsss train_model {ours:.3f} img/s, ratio {ours / ref:.2f}x "
              "(separate processes minutes apart: on a shared machine this ratio carries the load's swings)")
        report.update({"end_to_end": results, "end_to_end_ratio": ours / ref})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

if __name__ == "__main__":
    main()
