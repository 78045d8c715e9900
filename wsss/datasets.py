"""Dataset readers (VOC layout, folder layout, CamVid/SegNet layout) and the synthetic demo generator.

Readers never copy data: they index file paths at open time and read one image at a time in :meth:`Dataset.load`,
which raises :class:`~wsss.errors.ImageError` naming the file at fault. Whole-dataset problems (no such folder, an
empty split file) raise :class:`~wsss.errors.DatasetError`.

Layouts (detected by :func:`open_dataset`):

* **voc**: ``JPEGImages/<id>.jpg``, optional ``SegmentationClass/<id>.png`` (GT), optional ``Annotations/<id>.xml``
  (boxes, object names), ``ImageSets/Segmentation/<split>.txt``; optional ``classes.txt`` (else the 21 VOC classes).
  Image-level tags come from the XML object names, else from the classes present in the GT mask.
* **folder**: ``images/<id>.<ext>``, ``labels.csv`` (``id,labels`` with space-separated class names),
  optional ``boxes.csv`` (``id,class,x0,y0,x1,y1``), optional ``masks/<id>.png``, ``classes.txt`` (background
  first), optional ``splits/<split>.txt`` (else every id of labels.csv).
* **camvid** (SegNet tutorial): ``<split>/<id>.<ext>``, ``<split>annot/<id>.png``, ``<split>.txt``; CamVid's 11
  classes, value 11 (void) read as 255. Tags come from the masks.
* **isbi** (ISBI 2012 EM membranes as in zhixuhao/unet): ``train/images/<n>.png``, ``train/masks/<n>.png`` (0 =
  membrane, 255 = cell interior), ``test/images/<n>.png`` (no GT). Classes ``cell`` (0, background) and
  ``membrane`` (1): mask pixels < 128 become 1, the others 0. No split files: ``train`` = ids 0-24, ``val`` = ids
  25-29, ``trainval`` = all 30 labelled images, ``test`` = the unlabelled test images (ids sorted numerically).

Boxes are (N, 5) int64 ``[class, x0, y0, x1, y1]`` in pixels with x1/y1 exclusive. VOC XML boxes (1-based,
inclusive) are converted; every box is clipped to the image; a box with no area left after clipping is an error.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conventions import BACKGROUND, IGNORE, builtin_classes, read_class_file
from .errors import DatasetError, ImageError
from .files import open_regular, read_csv_rows, read_text
from .io import check_image_id, read_image, read_mask

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class Sample:
    """One image with its weak labels: ``image`` (H, W, 3) uint8 RGB, ``image_labels`` sorted class ids
    (background excluded), ``boxes`` (N, 5) int64, ``gt`` (H, W) uint8 or None."""

    id: str
    image: np.ndarray | None
    image_labels: tuple[int, ...]
    boxes: np.ndarray
    gt: np.ndarray | None = None


@dataclass
class Dataset:
    """An indexed dataset split. Use :func:`open_dataset` to make one."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    split: str | None
    ids: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)
    ignore_values: tuple[int, ...] = ()
    palette_name: str | None = None
    _labels_csv: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _boxes_csv: dict[str, list[tuple[int, list[str]]]] = field(default_factory=dict, repr=False)  # (line, cells)

    # ------------------------------------------------------------------------------------------ paths
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, image_id: str) -> Path:
        folder = {"voc": "JPEGImages", "folder": "images"}.get(self.layout, self.split or "")
        if self.layout == "isbi":
            folder = f"{'test' if self.split == 'test' else 'train'}/images"
        base = self.root / folder
        for ext in IMAGE_EXTENSIONS:
            path = base / f"{image_id}{ext}"
            if path.exists():
                return path
        return base / f"{image_id}{'.jpg' if self.layout == 'voc' else '.png'}"

    def gt_path(self, image_id: str) -> Path | None:
        if self.layout == "voc":
            path = self.root / "SegmentationClass" / f"{image_id}.png"
        elif self.layout == "folder":
            path = self.root / "masks" / f"{image_id}.png"
        elif self.layout == "isbi":
            if self.split == "test":
                return None
            path = self.root / "train" / "masks" / f"{image_id}.png"
        else:
            path = self.root / f"{self.split}annot" / f"{image_id}.png"
        return path if path.exists() else None

    @property
    def has_gt(self) -> bool:
        return any(self.gt_path(i) is not None for i in self.ids[:50])

    def describe(self) -> dict:
        return {"path": str(self.root), "layout": self.layout, "split": self.split, "images": len(self.ids),
                "classes": len(self.classes)}

    # ------------------------------------------------------------------------------------------ loading
    def class_id(self, name: str, where: Path | str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise ImageError(
                f"{where}: unknown class name {name!r}; known classes are {', '.join(self.classes[1:])}. "
                "Fix the name or add it to the classes file"
            ) from None

    def load_gt(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The GT mask (H, W) uint8 with void as 255, or None when the dataset has none for this image."""
        path = self.gt_path(image_id)
        if path is None:
            return None
        if self.layout == "isbi":  # 0 = membrane, 255 = cell interior -> membrane 1, cell 0
            mask = (read_mask(path) < 128).astype(np.uint8)
        else:
            mask = read_mask(path, self.num_classes, ignore_values=self.ignore_values)
        if shape is not None and mask.shape != tuple(shape):
            raise ImageError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}; "
                "the mask must have the image's size (re-export it or remove it)"
            )
        return mask

    def load(self, image_id: str, *, image: bool = True, gt: bool = True) -> Sample:
        """Read one image with its tags, boxes and (optionally) GT. Raises :class:`ImageError` on bad input."""
        check_image_id(image_id)
        img = read_image(self.image_path(image_id)) if image else None
        shape = img.shape[:2] if img is not None else None
        mask = self.load_gt(image_id, shape) if (gt or self.layout in ("camvid", "isbi")) else None
        if self.layout == "voc":
            labels, boxes = self._voc_annotation(image_id, mask, shape)
        elif self.layout == "folder":
            labels, boxes = self._folder_annotation(image_id, shape)
        else:
            labels, boxes = _labels_from_mask(mask), np.zeros((0, 5), np.int64)
        return Sample(image_id, img, labels, boxes, mask if gt else None)

    def _voc_annotation(self, image_id, mask, shape):
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        boxes = []
        names = []
        if xml_path.exists():
            try:
                with open_regular(xml_path, "annotation file", ImageError) as fh:
                    root = ET.parse(fh).getroot()
            except ET.ParseError as exc:
                raise ImageError(f"{xml_path}: broken XML ({exc}); fix or delete the annotation file") from None
            for obj in root.iter("object"):
                name = (obj.findtext("name") or "").strip()
                cls = self.class_id(name, xml_path)
                names.append(cls)
                bb = obj.find("bndbox")
                if bb is not None:
                    try:
                        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                    except (TypeError, ValueError):
                        raise ImageError(f"{xml_path}: object {name!r} has a bndbox without numeric "
                                         "xmin/ymin/xmax/ymax; fix the annotation") from None
                    if not all(map(math.isfinite, (x0, y0, x1, y1))):
                        raise ImageError(f"{xml_path}: object {name!r} has a bndbox with a non-finite coordinate "
                                         f"({x0}, {y0}, {x1}, {y1}); give pixel numbers") from None
                    # VOC: 1-based inclusive -> 0-based, x1/y1 exclusive
                    boxes.append([cls, round(x0) - 1, round(y0) - 1, round(x1), round(y1)])
            labels = tuple(sorted(set(names)))
        elif mask is not None:
            labels = _labels_from_mask(mask)
        else:
            gt = self.gt_path(image_id)
            if gt is None:
                raise ImageError(
                    f"{xml_path}: no annotation and no GT mask for {image_id!r}; image-level tags come from "
                    "Annotations/<id>.xml or SegmentationClass/<id>.png, add one of them"
                )
            labels = _labels_from_mask(read_mask(gt, self.num_classes))
        return labels, _clip_boxes(np.asarray(boxes, np.int64).reshape(-1, 5), shape, xml_path)

    def _folder_annotation(self, image_id, shape):
        where = self.root / "labels.csv"
        if image_id not in self._labels_csv:
            raise ImageError(f"{where}: no row for image {image_id!r}; add '{image_id},<class names>'")
        labels = tuple(sorted({self.class_id(n, where) for n in self._labels_csv[image_id]}))
        rows = []
        boxes_csv = self.root / "boxes.csv"
        for lineno, row in self._boxes_csv.get(image_id, []):
            where = f"{boxes_csv}: line {lineno}"
            if len(row) != 5:
                raise ImageError(f"{where}: row {[image_id, *row]} has {len(row) + 1} fields, but it needs "
                                 "id,class,x0,y0,x1,y1 numbers; fix the line")
            cls = self.class_id(row[0], where)
            coords = []
            for field_name, value in zip(("x0", "y0", "x1", "y1"), row[1:]):
                try:
                    number = float(value)
                except ValueError:
                    number = math.nan
                if not math.isfinite(number) or abs(number) > 1e9:
                    raise ImageError(f"{where}: field {field_name} = {value!r} is not a finite pixel number; the row "
                                     "needs id,class,x0,y0,x1,y1 numbers; fix the line")
                coords.append(round(number))
            rows.append([cls, *coords])
        return labels, _clip_boxes(np.asarray(rows, np.int64).reshape(-1, 5), shape, boxes_csv)


def _labels_from_mask(mask: np.ndarray | None) -> tuple[int, ...]:
    if mask is None:
        return ()
    values = np.unique(mask)
    return tuple(int(v) for v in values if v not in (BACKGROUND, IGNORE))


def _clip_boxes(boxes: np.ndarray, shape, where) -> np.ndarray:
    """Clip boxes to the image; a box left with no area is an :class:`ImageError` naming the file."""
    if len(boxes) == 0:
        return boxes
    if shape is None:  # image not read: no clipping, but a box with no area is still an error
        empty = (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] <= boxes[:, 2])
        if empty.any():
            raise ImageError(f"{where}: box [class, x0, y0, x1, y1] = {boxes[empty][0].tolist()} has no area; "
                             "fix or remove it")
        return boxes
    h, w = shape
    out = boxes.copy()
    out[:, 1] = np.clip(out[:, 1], 0, w)
    out[:, 3] = np.clip(out[:, 3], 0, w)
    out[:, 2] = np.clip(out[:, 2], 0, h)
    out[:, 4] = np.clip(out[:, 4], 0, h)
    empty = (out[:, 3] <= out[:, 1]) | (out[:, 4] <= out[:, 2])
    if empty.any():
        bad = boxes[empty][0].tolist()
        raise ImageError(
            f"{where}: box [class, x0, y0, x1, y1] = {bad} has no area inside the {w}x{h} image; fix or remove it"
        )
    return out


# ---------------------------------------------------------------------------------------------- opening
def detect_layout(root: Path) -> str:
    if (root / "JPEGImages").is_dir():
        return "voc"
    if (root / "images").is_dir() and (root / "labels.csv").exists():
        return "folder"
    if any((root / f"{s}annot").is_dir() for s in ("train", "val", "test")):
        return "camvid"
    if (root / "train" / "images").is_dir() and (root / "train" / "masks").is_dir():
        return "isbi"
    raise DatasetError(
        f"{root}: not a dataset folder; expected a VOC layout (JPEGImages/), a folder layout (images/ + "
        "labels.csv) or a CamVid layout (train/ + trainannot/). Make one with 'wsss make-demo-data DIR'"
    )


def open_dataset(path: str | Path, split: str | None = None) -> Dataset:
    """Open a dataset folder (layout detected) restricted to ``split`` (None: the whole set)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; check --dataset")
    layout = detect_layout(root)
    if layout == "voc":
        classes = read_class_file(root / "classes.txt") if (root / "classes.txt").exists() else builtin_classes("voc")
        split_dir = root / "ImageSets" / "Segmentation"
        split = split or "trainval"
        ids, problems = read_split_spec(split, lambda name: split_dir / f"{name}.txt", split_dir)
        return Dataset(root, layout, classes, split, ids, problems)
    if layout == "camvid":
        if split is None:
            raise DatasetError(f"{root}: CamVid layout needs --split (train, val or test)")
        ids, problems = _read_split(root / f"{split}.txt", root)  # its folders are named by split: no expressions
        classes = builtin_classes("camvid")
        return Dataset(root, layout, classes, split, ids, problems, ignore_values=(len(classes),),
                       palette_name="camvid")
    if layout == "isbi":
        return _open_isbi(root, split)
    # folder layout
    if not (root / "classes.txt").exists():
        raise DatasetError(f"{root / 'classes.txt'}: missing; list the class names one a line, background first")
    classes = read_class_file(root / "classes.txt")
    labels_csv: dict[str, list[str]] = {}
    order: list[str] = []
    order_lines: list[int] = []
    for lineno, row in read_csv_rows(root / "labels.csv", "labels file"):
        if row[0].strip().lower() == "id" or row[0].lstrip().startswith("#"):
            continue
        image_id = row[0].strip()
        order.append(image_id)  # a repeated id is reported by _dedupe; its first row's tags are used
        order_lines.append(lineno)
        labels_csv.setdefault(image_id, " ".join(row[1:]).split())
    boxes_csv: dict[str, list[tuple[int, list[str]]]] = {}
    if (root / "boxes.csv").exists():
        for lineno, row in read_csv_rows(root / "boxes.csv", "boxes file"):
            if row[0].strip().lower() == "id" or row[0].lstrip().startswith("#"):
                continue
            boxes_csv.setdefault(row[0].strip(), []).append((lineno, [c.strip() for c in row[1:]]))
    if split is not None and split != "all":
        ids, problems = read_split_spec(split, lambda name: root / "splits" / f"{name}.txt", root / "splits",
                                        no_split_hint="; this folder layout has no splits/ folder: use --split all (every "
                                                      "id of labels.csv), or write splits/<name>.txt with one id a "
                                                      "line")
    else:
        ids, problems = _dedupe(order, root / "labels.csv", order_lines)
        if not ids:
            raise DatasetError(f"{root / 'labels.csv'}: no images listed; add rows 'id,class names'")
    return Dataset(root, layout, classes, split, ids, problems, _labels_csv=labels_csv, _boxes_csv=boxes_csv)


ISBI_CLASSES = ("cell", "membrane")
ISBI_SPLITS = {"train": slice(0, 25), "val": slice(25, 30), "trainval": slice(0, 30)}


def _open_isbi(root: Path, split: str | None) -> Dataset:
    """The ISBI 2012 membrane layout: fixed splits over the numerically sorted ids (no split files)."""
    split = split or "trainval"
    if split not in (*ISBI_SPLITS, "test"):
        raise DatasetError(f"{root}: ISBI layout has splits train (ids 0-24), val (25-29), trainval and test; "
                           f"got --split {split!r}")
    folder = root / ("test" if split == "test" else "train") / "images"
    stems = sorted((p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    if split != "test":
        stems = stems[ISBI_SPLITS[split]]
    if not stems:
        raise DatasetError(f"{folder}: no images for split {split!r}; expected <n>.png files")
    ids, problems = _dedupe(stems, folder)
    return Dataset(root, "isbi", ISBI_CLASSES, split, ids, problems)


SPLIT_TERM = re.compile(r"([\w.]+)(?:\[(-?\d*):(-?\d*)(?::(-?\d*))?\])?")


def read_split_spec(split: str, path_of, split_dir: Path, *, no_split_hint: str = "") -> tuple[list[str], list]:
    """The ids of ``split``: the split file of that name (``path_of(name)``) when there is one, else an expression
    over split files: ``NAME[a:b:c]`` is a Python slice of the split's ids in file order (``train[::4]``: every 4th
    id), ``A-B`` the ids of A that are not in B. ``--saliency-split 'train[::4]'`` with ``--split
    'train-train[::4]'`` parts one split into two disjoint ones (boxes for the saliency net, tags for the rest)."""
    if path_of(split).exists() or not any(ch in split for ch in "[-"):
        return _read_split(path_of(split), split_dir, no_split_hint=no_split_hint)
    terms, pos = [], 0
    while True:
        m = SPLIT_TERM.match(split, pos)
        if m is None:
            break
        terms.append(m)
        pos = m.end()
        if pos == len(split) or split[pos] != "-":
            break
        pos += 1
    if not terms or pos != len(split):
        raise DatasetError(f"{path_of(split)}: split file not found, and {split!r} is not a split expression "
                           "(NAME, NAME[start:stop:step], A-B; e.g. 'train[::4]', 'train-train[::4]')")
    selected = []
    for m in terms:
        name, a, b, c = m.groups()
        ids, problems = _read_split(path_of(name), split_dir, no_split_hint=no_split_hint)
        if m.group(0) != name:
            if c not in (None, "") and int(c) == 0:
                raise DatasetError(f"split {split!r}: a slice step of 0 selects nothing; give e.g. [::4]")
            ids = ids[slice(*(int(v) if v not in (None, "") else None for v in (a, b, c)))]
        selected.append((ids, problems))
    ids, problems = selected[0]
    excluded = {i for other, _ in selected[1:] for i in other}
    ids = [i for i in ids if i not in excluded]
    if not ids:
        raise DatasetError(f"split {split!r} selects no image id; check the expression")
    return ids, problems


def _read_split(path: Path, split_dir: Path, *, no_split_hint: str = "") -> tuple[list[str], list[tuple[str, str]]]:
    """The ids of a split file: one id a line (UTF-8, BOM dropped, LF or CRLF), blank lines and ``#`` comments
    skipped, surrounding spaces stripped. An id holding a space or tab is refused by :func:`check_image_id`
    (ids are file stems without spaces), never cut at the space."""
    if not path.exists():
        have = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
        raise DatasetError(f"{path}: split file not found; available splits: {', '.join(have) or 'none'}"
                           + (no_split_hint if not have else ""))
    lines = [(n, ln.strip()) for n, ln in enumerate(read_text(path, "split file").splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise DatasetError(f"{path}: split file is empty; list one image id a line")
    return _dedupe([ln for _, ln in lines], path, [n for n, _ in lines])


def _dedupe(raw: list[str], where: Path, linenos: list[int] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    ids, problems, seen = [], [], set()
    for lineno, image_id in zip(linenos or range(1, len(raw) + 1), raw):
        if image_id in seen:
            problems.append((image_id, f"{where}: line {lineno}: duplicate id {image_id!r}; it is processed once, "
                                       "delete the repeated line"))
            continue
        seen.add(image_id)
        try:
            check_image_id(image_id, f"{where} line {lineno}")
        except ImageError as exc:
            problems.append((image_id, str(exc)))
            continue
        ids.append(image_id)
    return ids, problems


# ---------------------------------------------------------------------------------------- demo dataset
DEMO_CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
# each class: a base hue (OpenCV 0..179) and a texture; colours are jittered per instance
_DEMO_STYLE = {1: (0, "plain"), 2: (30, "stripes"), 3: (60, "dots"), 4: (100, "plain"), 5: (140, "checker")}


def _texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A (h, w) float texture in [-1, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(5, 10)
    angle = rng.uniform(0, np.pi)
    if kind == "stripes":
        return np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))
    if kind == "dots":
        return (np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period) > 0.5).astype(np.float32) * 2 - 1
    if kind == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2) * 2 - 1
    return np.zeros((h, w), np.float32)


def _hsv_colour(hue: float, sat: float, val: float) -> np.ndarray:
    import cv2

    hsv = np.array([[[hue % 180, np.clip(sat, 0, 255), np.clip(val, 0, 255)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _shape_mask(cls: int, h: int, w: int, cx: int, cy: int, r: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    m = np.zeros((h, w), np.uint8)
    if cls == 1:  # disc
        cv2.ellipse(m, (cx, cy), (r, int(r * rng.uniform(0.7, 1.0))), rng.uniform(0, 180), 0, 360, 1, -1)
    elif cls == 2:  # square (rotated)
        box = cv2.boxPoints(((cx, cy), (2 * r * 0.9, 2 * r * rng.uniform(0.75, 0.95)), rng.uniform(0, 90)))
        cv2.fillPoly(m, [box.astype(np.int32)], 1)
    elif cls == 3:  # triangle
        a0 = rng.uniform(0, 2 * np.pi)
        pts = [(cx + r * np.cos(a0 + k * 2 * np.pi / 3), cy + r * np.sin(a0 + k * 2 * np.pi / 3)) for k in range(3)]
        cv2.fillPoly(m, [np.array(pts, np.int32)], 1)
    elif cls == 4:  # ring
        cv2.circle(m, (cx, cy), r, 1, -1)
        cv2.circle(m, (cx, cy), max(2, int(r * rng.uniform(0.4, 0.55))), 0, -1)
    else:  # cross
        t = max(3, int(r * 0.35))
        cv2.rectangle(m, (cx - r, cy - t), (cx + r, cy + t), 1, -1)
        cv2.rectangle(m, (cx - t, cy - r), (cx + t, cy + r), 1, -1)
    return m


def make_demo_scene(rng: np.random.Generator, size: tuple[int, int] = (128, 160), max_objects: int = 3):
    """One synthetic scene: ``(image (H, W, 3) uint8, gt (H, W) uint8, boxes (N, 5) int64)``.

    Objects of the demo classes (shape + class hue + class texture, colours jittered) lie on a textured background
    of random colour and brightness with class-less clutter blobs, so that a global threshold alone cannot separate
    them. Boxes are the extents of each instance's visible pixels (x1/y1 exclusive).
    """
    import cv2

    h, w = size
    base = _hsv_colour(rng.uniform(0, 180), rng.uniform(20, 120), rng.uniform(60, 200))
    grad = np.linspace(-1, 1, w, dtype=np.float32)[None, :] * rng.uniform(-30, 30)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(1.5, 4)) * 18
    img = base[None, None, :] + (grad + noise)[..., None]
    for _ in range(rng.integers(1, 4)):  # clutter: soft blobs in random colours, never labelled
        blob = np.zeros((h, w), np.float32)
        cv2.circle(blob, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(6, h // 4)), 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), 4)[..., None]
        colour = _hsv_colour(rng.uniform(0, 180), rng.uniform(0, 60), rng.uniform(40, 230))
        img = img * (1 - 0.7 * blob) + colour * 0.7 * blob
    gt = np.zeros((h, w), np.uint8)
    instances = np.zeros((h, w), np.int32)
    n = int(rng.integers(1, max_objects + 1))
    classes = rng.choice(np.arange(1, len(DEMO_CLASSES)), size=n, replace=n > len(DEMO_CLASSES) - 1)
    for k, cls in enumerate(classes, 1):
        r = int(rng.uniform(0.14, 0.26) * min(h, w))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        m = _shape_mask(int(cls), h, w, cx, cy, r, rng).astype(bool)
        hue, tex = _DEMO_STYLE[int(cls)]
        colour = _hsv_colour(hue + rng.uniform(-8, 8), rng.uniform(140, 230), rng.uniform(90, 240))
        pattern = _texture(tex, h, w, rng)[..., None] * rng.uniform(20, 40)
        obj = colour[None, None, :] + pattern + rng.normal(0, 6, (h, w, 1))
        img[m] = obj[m]
        gt[m] = cls
        instances[m] = k
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    boxes = []
    for k, cls in enumerate(classes, 1):
        ys, xs = np.nonzero(instances == k)
        if len(xs):  # every visible instance gets a box (and so a tag)
            boxes.append([int(cls), xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return img, gt, np.asarray(boxes, np.int64).reshape(-1, 5)


def make_demo_data(root: str | Path, num_images: int = 60, *, size: tuple[int, int] = (128, 160), seed: int = 0,
                   val_fraction: float = 0.25) -> Path:
    """Write a seeded synthetic dataset in VOC layout (images, GT masks, XML boxes, splits, classes.txt).

    Deterministic for a given ``seed``: the same call writes the same files. Returns the dataset root.
    """
    from .io import write_bytes, write_jpeg, write_mask

    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_bytes(root / "classes.txt", ("\n".join(DEMO_CLASSES) + "\n").encode())
    rng = np.random.default_rng(seed)
    ids = []
    for k in range(num_images):
        image_id = f"demo_{k:04d}"
        img, gt, boxes = make_demo_scene(rng, size)
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", img, quality=92)
        write_mask(root / "SegmentationClass" / f"{image_id}.png", gt)
        write_bytes(root / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, img.shape, boxes).encode())
        ids.append(image_id)
    n_val = max(1, int(round(num_images * val_fraction)))
    splits = {"train": ids[:-n_val], "val": ids[-n_val:], "trainval": ids}
    for name, members in splits.items():
        write_bytes(root / "ImageSets" / "Segmentation" / f"{name}.txt", ("\n".join(members) + "\n").encode())
    return root


def _voc_xml(image_id: str, shape, boxes: np.ndarray) -> str:
    objects = "".join(
        f"  <object><name>{DEMO_CLASSES[c]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
        f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>\n"
        for c, x0, y0, x1, y1 in boxes.tolist()
    )
    return (f"<annotation>\n  <filename>{image_id}.jpg</filename>\n  <size><width>{shape[1]}</width>"
            f"<height>{shape[0]}</height><depth>3</depth></size>\n{objects}</annotation>\n")
