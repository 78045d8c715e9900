"""What bench_grabcut.py and bench_crf.py share: the common options, the scratch folder, a dataset view holding the
first N images of a split (symlinks, nothing copied), and timing the ``wsss`` command as a child process.

Imported as ``_harness`` (the scripts run as ``python bench/NAME.py``, so bench/ is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from wsss.datasets import Dataset, make_demo_data, open_dataset


def parser(doc: str, *, out: str) -> argparse.ArgumentParser:
    """An argument parser with --dataset, --split, --images, --workers and --out (default ``out``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None, help="dataset folder (default: a generated demo set)")
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=60, help="first N images of the split (0: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=out, help="scratch folder (git-ignored)")
    return p


@dataclass
class BenchSet:
    out: Path  # the emptied scratch folder
    root: Path  # the dataset given (or the generated demo set)
    split: str
    ids: list[str]  # the images benchmarked
    view: Path  # a dataset folder whose split "bench" holds exactly ``ids``
    dataset: Dataset  # ``view`` opened on split "bench"


def bench_set(args: argparse.Namespace, *, prefix: str) -> BenchSet:
    """Empty ``args.out``; open ``args.dataset`` (or generate a 120-image demo set, split trainval) and make a view
    of its first ``args.images`` images of ``args.split`` as split ``bench`` (``prefix`` names the view folder)."""
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if args.dataset is None:
        root = make_demo_data(out / "demo", 120)
        split = "trainval"
    else:
        root, split = Path(args.dataset), args.split
    full = open_dataset(root, split)
    ids = full.ids[: args.images] if args.images else full.ids
    view = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    for sub in ("JPEGImages", "SegmentationClass", "Annotations"):
        if (root / sub).exists():
            os.symlink((root / sub).resolve(), view / sub)
    if (root / "classes.txt").exists():
        os.symlink((root / "classes.txt").resolve(), view / "classes.txt")
    (view / "ImageSets" / "Segmentation").mkdir(parents=True)
    (view / "ImageSets" / "Segmentation" / "bench.txt").write_text("\n".join(ids) + "\n")
    return BenchSet(out, root, split, ids, view, open_dataset(view, "bench"))


def wsss_exe() -> str:
    """The ``wsss`` command of the running interpreter's environment."""
    return str(Path(sys.executable).with_name("wsss"))


def time_command(cmd: list[str]) -> float:
    """Wall seconds of ``cmd`` run to completion as a child process (stdout discarded; a failure raises)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0
