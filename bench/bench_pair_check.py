"""What the up-front check of training pairs costs (wsss.pairs.MaskPairs, issue 10).

Reference: one pass of the loader's own reading over the same pairs (``pairs.load(i)`` for every pair: the image
decode + mask read that every training epoch does before augmenting). Measured in the same run:

* first check: ``MaskPairs(..., check=True)`` with an empty cache (every pair read once);
* cached check: the same with the cache the first check wrote (a resumed run: only ``os.stat`` per file).

Usage: python bench/bench_pair_check.py [DATASET] [--split S] [--threads N]   (default: ../shared/data/voc-dev, GT)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wsss.datasets import open_dataset
from wsss.pairs import MaskPairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/voc-dev"))
    ap.add_argument("--split", default="trainval")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ds = open_dataset(args.dataset, args.split)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "pairs_checked.json"
        unchecked = MaskPairs(ds, None, check=False)
        t0 = time.perf_counter()
        for i in range(len(unchecked)):
            unchecked.load(i)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        pairs = MaskPairs(ds, None, check_cache=cache, check_threads=args.threads, progress=False)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        MaskPairs(ds, None, check_cache=cache, check_threads=args.threads, progress=False)
        t_cached = time.perf_counter() - t0
    n = len(unchecked)
    print(f"{n} pairs of {args.dataset} split {args.split}, {len(pairs.failures)} left out, threads {args.threads}")
    print(f"reference: one loader pass (pairs.load)   {t_ref:7.2f} s  {1000 * t_ref / n:6.2f} ms/pair")
    print(f"first check (empty cache)                 {t_first:7.2f} s  {1000 * t_first / n:6.2f} ms/pair  "
          f"ratio {t_first / t_ref:.2f}x the reference")
    print(f"cached check (resume, files unchanged)    {t_cached:7.2f} s  {1000 * t_cached / n:6.2f} ms/pair  "
          f"ratio {t_cached / t_ref:.3f}x the reference")


if __name__ == "__main__":
    main()
