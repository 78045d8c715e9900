"""Peak memory of a per-image stage against the number of images (issue 10: memory flat in the number of images).

Runs ``wsss seeds --method threshold`` as a child process on the 200-image and the 1000-image split of
../shared/data/voc-dev (val, trainval) and reads each child's own peak RSS with ``os.wait4``. The 200-image run is
the reference: the script prints ``peak(1000) / peak(200)``; flat memory means a ratio near 1 (5x the images).
``--symlinked N`` adds a run on N ids made of symlinks to the same images (a VOC-layout view in a temp folder, no
image copied) to stretch the range further. Without voc-dev, generated demo images are used.

    nice -n 10 /work/venv/bin/python bench/bench_memory.py [--workers 1] [--symlinked 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOC_DEV = ROOT.parent / "shared" / "data" / "voc-dev"
WSSS = str(Path(sys.executable).parent / "wsss")


def peak_rss_mib(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """Run ``cmd``; return (peak RSS of that child in MiB, wall seconds, exit status)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, proc.returncode


def symlinked_view(src: Path, dst: Path, n: int) -> Path:
    """A VOC-layout folder whose split lists ``n`` ids, each a symlink to one of ``src``'s images (round robin)."""
    ids = (src / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(n):
        base = ids[k % len(ids)]
        name = f"{base}_r{k // len(ids)}"
        for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png"), ("Annotations", ".xml")):
            target = src / sub / f"{base}{ext}"
            if target.exists():
                (dst / sub / f"{name}{ext}").symlink_to(target)
        names.append(name)
    (dst / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(names) + "\n")
    for extra in ("classes.txt",):
        if (src / extra).exists():
            (dst / extra).symlink_to(src / extra)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--symlinked", type=int, default=0, help="also run on N symlinked ids (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "memory"))
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if (VOC_DEV / "JPEGImages").is_dir():
        data, runs = VOC_DEV, [("val", 200), ("trainval", 1000)]
        source = f"{VOC_DEV} (real VOC photos)"
    else:
        sys.path.insert(0, str(ROOT))
        from wsss.datasets import make_demo_data

        data = make_demo_data(out / "demo", 1000, size=(375, 500), seed=0, val_fraction=0.2)
        runs, source = [("val", 200), ("trainval", 1000)], f"{data} (generated, 375x500)"
    tmp = None
    if args.symlinked:
        tmp = Path(tempfile.mkdtemp(prefix="wsss-mem-"))
        runs.append(("symlinked", args.symlinked))
    print(f"dataset: {source}; workers {args.workers}; python {sys.version.split()[0]}")
    print(f"{'images':>7} {'split':<10} {'peak RSS MiB':>13} {'seconds':>8} {'img/s':>7}")
    results = {}
    for split, n in runs:
        dataset = data if split != "symlinked" else symlinked_view(data, tmp / "data", n)
        cmd = [WSSS, "seeds", "--method", "threshold", "--dataset", str(dataset),
               "--split", "trainval" if split == "symlinked" else split, "--run", str(out / f"run_{n}"),
               "--workers", str(args.workers)]
        rss, seconds, rc = peak_rss_mib(cmd, env)
        if rc != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {rc}")
        masks = len(list((out / f"run_{n}" / "seeds" / "threshold" / "masks").iterdir()))
        assert masks == n, (masks, n)
        results[n] = rss
        print(f"{n:>7} {split:<10} {rss:>13.1f} {seconds:>8.1f} {n / seconds:>7.1f}")
    base = results[200]
    for n, rss in results.items():
        if n != 200:
            print(f"peak RSS ratio {n} / 200 images: {rss / base:.3f} (reference: the 200-image run above)")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
