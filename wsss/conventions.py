"""Label conventions, class lists and palettes.

Masks are (H, W) uint8: ``BACKGROUND`` (0) is background, ``k`` is class k of the dataset's class list,
``IGNORE`` (255) means "unsure / no label". Class lists are read from the project's ``data/`` folder.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import read_text

BACKGROUND = 0
IGNORE = 255


def data_dir() -> Path:
    """The folder holding the shipped class lists and palettes (source tree, else ``<prefix>/share/wsss/data``)."""
    here = Path(__file__).resolve().parent.parent / "data"
    if (here / "voc.txt").exists():
        return here
    return Path(sys.prefix) / "share" / "wsss" / "data"


@lru_cache(maxsize=None)
def builtin_classes(name: str) -> tuple[str, ...]:
    """Class names of a shipped class list (``voc``, ``camvid``, ``demo``); index = label value."""
    path = data_dir() / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no class list {path}; shipped lists: voc, camvid, demo")
    return read_class_file(path)


def read_class_file(path: Path) -> tuple[str, ...]:
    """Read a classes file: one class name a line, line order = label value; blank lines and ``#`` skipped.
    UTF-8 (a BOM is dropped), LF or CRLF; another encoding is a :class:`~wsss.errors.DatasetError` naming the line."""
    names = [ln.strip() for ln in read_text(path, "classes file").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        from .errors import DatasetError

        raise DatasetError(f"{path}: classes file is empty; write one class name a line, background first")
    if len(names) > 255:
        from .errors import DatasetError

        raise DatasetError(f"{path}: {len(names)} classes, at most 255 fit a uint8 mask with 255 = ignore")
    return tuple(names)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, label k -> colour from the bits of k."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[k] = (r, g, b)
    palette[IGNORE] = (224, 224, 192)
    return palette


@lru_cache(maxsize=None)
def palette_for(num_classes: int, name: str | None = None) -> np.ndarray:
    """(256, 3) uint8 palette: CamVid's own colours for ``name='camvid'``, else the VOC colour map."""
    palette = voc_palette(256)
    if name == "camvid":
        rows = np.loadtxt(data_dir() / "camvid_palette.txt", dtype=np.uint8).reshape(-1, 3)
        palette[: len(rows)] = rows
    return palette
