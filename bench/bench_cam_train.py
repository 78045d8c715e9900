"""CAM classifier training throughput: the settings ``wsss seeds --method cam`` trains with against a naive loop.

Reference (named ``naive``): the same classifier (same seed and backbone), fp32, contiguous layout. The other
variant uses what :func:`wsss.trainers.cam_classifier.train_classifier` picks on this machine: channels_last, and bf16
autocast where ``--bf16 auto`` turns it on (CUDA, or a CPU with native bf16). One process holds both models
and alternates one step of each on the same random batch, swapping the order every step, so that a change of the
machine's load hits both alike; medians of wall time and process CPU time per step, first step left out. A third
variant adds ``--freeze-stride`` (the early layers kept at their pretrained weights: no backward through them).

The input side is timed after the steps, in the same process and threads: the augmentation the classifier trained
with before (torchvision.transforms.v2: resize, RandomCrop, flip, ColorJitter with hue, on uint8 tensors; the
reference) against :func:`wsss.pairs.augment_tagged` (OpenCV/NumPy), on VOC-sized 375 x 500 photographs of
``--dataset`` (or random images when none is given).

    python bench/bench_cam_train.py --backbone efficientnet_lite0 --crop 256 --batch 16 --steps 6 \
        --freeze-stride 8 --dataset ../shared/data/voc-dev
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.nn import functional as F

from wsss.models.backbones import freeze_early_layers
from wsss.models.classifier import build_classifier
from wsss.runtime import bf16_autocast, uses_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--weights", default="auto", help="backbone init (auto: ImageNet for EfficientNet-Lite)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--freeze-stride", type=int, default=8, help="the third variant's freeze_stride (0: none)")
    parser.add_argument("--dataset", default=None, help="a VOC-layout folder for the augmentation timing")
    parser.add_argument("--images", type=int, default=48, help="images for the augmentation timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    base = build_classifier(num_classes=20, backbone=args.backbone, weights=args.weights)
    bf16 = uses_bf16("auto", device)
    variants = {"naive (fp32, contiguous)": (copy.deepcopy(base), False, False),
                f"wsss (channels_last{', bf16' if bf16 else ''})":
                    (copy.deepcopy(base).to(memory_format=torch.channels_last), True, bf16)}
    if args.freeze_stride:
        frozen = copy.deepcopy(base).to(memory_format=torch.channels_last)
        freeze_early_layers(frozen.backbone, args.freeze_stride)
        variants[f"wsss + freeze_stride {args.freeze_stride}"] = (frozen, True, bf16)
    opts = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
            for name, (m, _, _) in variants.items()}
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    gen = torch.Generator().manual_seed(0)
    names = list(variants)
    for step in range(args.steps + 1):
        images = torch.randn(args.batch, 3, args.crop, args.crop, generator=gen)
        targets = (torch.rand(args.batch, 20, generator=gen) < 0.1).float()
        for name in (names if step % 2 == 0 else names[::-1]):
            model, channels_last, use_bf16 = variants[name]
            model.train()
            x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
            t0, c0 = time.perf_counter(), time.process_time()
            with bf16_autocast(device, use_bf16):
                logits = model(x)
            loss = F.multilabel_soft_margin_loss(logits.float(), targets)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if step:  # the first step builds oneDNN primitives
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    ref = names[0]
    print(f"classifier {args.backbone}, batch {args.batch}, crop {args.crop}, {args.steps} timed steps each, "
          f"{torch.get_num_threads()} threads, interleaved")
    print(f"{'variant':<32} {'img/s':>8} {'s/step':>8} {'CPU s/step':>11} {'ratio':>6}")
    for name in names:
        w = statistics.median(wall[name])
        print(f"{name:<32} {args.batch / w:8.2f} {w:8.3f} {statistics.median(cpu[name]):11.3f} "
              f"{statistics.median(wall[ref]) / w:6.2f}")
    augmentation(args, base.backbone.mean, base.backbone.std)


def augmentation(args, mean, std) -> None:
    """Milliseconds an image: the old torchvision pipeline (reference) against wsss.pairs.augment_tagged."""
    import numpy as np
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    from wsss.pairs import augment_tagged

    if args.dataset:
        from wsss.datasets import open_dataset

        dataset = open_dataset(args.dataset, "train")
        images = [np.asarray(dataset.load(i, gt=False).image) for i in dataset.ids[:args.images]]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.images)]
    old = v2.Compose([v2.RandomCrop(args.crop, pad_if_needed=True), v2.RandomHorizontalFlip(),
                      v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def torchvision_old(image):
        x = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        scale = int(torch.randint(320, 513, (1,))) / max(x.shape[1:])
        x = TF.resize(x, [round(x.shape[1] * scale), round(x.shape[2] * scale)], antialias=True)
        return old(x)

    def wsss_new(image):
        return torch.from_numpy(augment_tagged(image, crop_size=args.crop, resize_long=(320, 512),
                                               normalisation=(mean, std)))

    times = {}
    for name, fn in (("torchvision v2 (before; reference)", torchvision_old), ("wsss.pairs.augment_tagged", wsss_new)):
        fn(images[0])
        t0 = time.perf_counter()
        for image in images:
            fn(image)
        times[name] = 1000 * (time.perf_counter() - t0) / len(images)
    ref = next(iter(times))
    print(f"augmentation, {len(images)} {'photographs' if args.dataset else 'random images'}, crop {args.crop}, "
          f"{torch.get_num_threads()} threads")
    for name, ms in times.items():
        print(f"{name:<36} {ms:8.2f} ms/img {times[ref] / ms:6.2f}x")


if __name__ == "__main__":
    main()
