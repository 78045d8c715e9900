"""DeepLab-v2 training step time by output stride and precision (EfficientNet-Lite0 from its installed weights).

One process, the same random batch for every variant: batch 8, crop 321, channels_last, AdamW; prints the
seconds per step of steps 2..N (sorted) and the ratios against OS8 fp32 (the paper's stride, the reference).

    python bench/bench_output_stride.py --steps 5 --batch 8 --crop 321
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from wsss.models import build_model


def step_times(output_stride: int, bf16: bool, args) -> list[float]:
    torch.manual_seed(0)
    model = build_model("deeplabv2", num_classes=21, backbone=args.backbone, weights="imagenet",
                        output_stride=output_stride)
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.crop, args.crop).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 21, (args.batch, args.crop, args.crop))
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=321)
    args = ap.parse_args()
    medians = {}
    for output_stride in (8, 16):
        for bf16 in (False, True):
            times = step_times(output_stride, bf16, args)
            medians[(output_stride, bf16)] = statistics.median(times)
            print(f"OS{output_stride} {'bf16' if bf16 else 'fp32'}: " + " ".join(f"{t:.2f}" for t in times) + " s/step")
    ref = medians[(8, False)]
    for key, value in medians.items():
        print(f"OS{key[0]} {'bf16' if key[1] else 'fp32'}: {ref / value:.2f}x OS8 fp32")


if __name__ == "__main__":
    main()
