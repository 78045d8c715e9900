"""Label conventions, class lists and palettes.

Masks are (H, W) uint8: ``BACKGROUND`` (0) is background, ``k`` is class k of the dataset's class list,
``IGNORE`` (255) means "unsure / no label". Class lists are read from the project's ``data/`` folder.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import read_text, read_yaml

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


def imagenet_groups(class_names, path: Path | None = None) -> dict[int, tuple[int, ...]]:
    """Dataset class id -> the ImageNet-1k class indices that are kinds of it, from ``path`` (default: the shipped
    ``data/imagenet_groups.yaml``: class name -> torchvision's ImageNet class names or ``"first-last"`` index
    ranges). Classes without an entry (and background) are left out; an entry naming no dataset class is skipped
    (one file serves any dataset with VOC's class names); an unknown ImageNet name is a
    :class:`~wsss.errors.ConfigError` naming it."""
    import torchvision

    from .errors import ConfigError

    path = data_dir() / "imagenet_groups.yaml" if path is None else Path(path)
    table = read_yaml(path, "ImageNet groups file", ConfigError,
                      not_found="ImageNet groups file not found; give the path of a YAML file "
                                "(dataset class name: [ImageNet class names])") or {}
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise ConfigError(f"{path}: write one 'class: [ImageNet names]' line a class")
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # no download
    index = {name: i for i, name in enumerate(categories)}
    groups = {}
    for name, members in table.items():
        if name not in class_names or name == class_names[BACKGROUND]:
            continue
        ids = []
        for member in members:
            first, dash, last = str(member).partition("-")
            if dash and first.isdigit() and last.isdigit():
                ids.extend(range(int(first), int(last) + 1))
            elif member in index:
                ids.append(index[member])
            else:
                raise ConfigError(f"{path}: {name}: {member!r} is not an ImageNet class name (torchvision's "
                                  "spelling) nor a 'first-last' index range")
        if any(not 0 <= i < len(categories) for i in ids):
            raise ConfigError(f"{path}: {name}: index outside 0..{len(categories) - 1}")
        groups[list(class_names).index(name)] = tuple(sorted(set(ids)))
    return groups
