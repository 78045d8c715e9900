"""Reading a finished stage folder (the next stage reads the upstream ``manifest.csv``, never a glob)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError, StageError
from .io import read_csv, read_json, read_mask, read_scores

PATH_COLUMNS = ("mask", "scores")  # manifest columns holding a file path relative to the stage folder


def _check_row_paths(manifest: Path, lineno: int, row: dict) -> bool:
    """A manifest is data, not a list of paths to trust: a path column must be a plain relative path inside the
    stage folder (no absolute path, no ``..``, no drive or backslash tricks). A row breaking that is turned into a
    failed row naming the manifest line (False returned), so that image fails downstream with the reason and the
    others go on."""
    for column in PATH_COLUMNS:
        rel = row.get(column) or ""
        if not rel:
            continue
        parts = Path(rel).parts
        if Path(rel).is_absolute() or "\\" in rel or ":" in rel or ".." in parts:
            row.update(status="failed", mask="", scores="", error=(
                f"{manifest}: line {lineno}: {column} path {rel!r} of image {row.get('image_id')!r} points outside "
                "its stage folder; the manifest was edited or damaged: re-run the stage that wrote it"))
            return False
    return True


def _ok(row: dict | None) -> bool:
    return row is not None and row.get("status") == "ok"


def upstream_split(path: str | Path | None) -> str | None:
    """The split a stage folder was made on (its ``stage.json``), or None (no path, no stage.json, unreadable):
    the default ``--split`` of a command reading that folder."""
    info = Path(path) / "stage.json" if path else None
    if info is None or not info.exists():
        return None
    try:
        return read_json(info).get("inputs", {}).get("dataset", {}).get("split")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class StageFolder:
    """A stage folder: ``stage.json`` + ``manifest.csv`` + ``masks/`` (+ ``scores/``).

    A plain folder of PNG masks (no manifest) is accepted too, so any mask folder can be evaluated or trained on.
    """

    path: Path
    info: dict = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # image id -> why its manifest row was not trusted

    @classmethod
    def open(cls, path: str | Path) -> "StageFolder":
        path = Path(path)
        if not path.is_dir():
            raise StageError(f"{path}: stage folder not found; run the stage first or fix the path")
        manifest = path / "manifest.csv"
        if manifest.exists():
            info = read_json(path / "stage.json") if (path / "stage.json").exists() else {}
            rows: dict[str, dict] = {}
            refused: dict[str, str] = {}
            for lineno, r in enumerate(read_csv(manifest), 2):
                if not isinstance(r.get("image_id"), str):
                    continue  # a short or blank line names no image
                if not _check_row_paths(manifest, lineno, r):
                    refused[r["image_id"]] = r["error"]
                if r["image_id"] not in rows or rows[r["image_id"]].get("status") != "ok":
                    rows[r["image_id"]] = r  # a duplicate id's failed row never hides the id's finished row
            return cls(path, info, rows, {i: why for i, why in refused.items() if not _ok(rows.get(i))})
        if (path / "stage.json").exists():
            raise StageError(
                f"{path}: the stage has not finished (stage.json but no manifest.csv: still running or "
                "interrupted); re-run the same stage command to complete it"
            )
        mask_dir = path / "masks" if (path / "masks").is_dir() else path
        pngs = sorted(mask_dir.glob("*.png"))
        if not pngs:
            raise StageError(
                f"{path}: no manifest.csv and no PNG masks; point at a stage folder or a folder of mask PNGs"
            )
        rows = {p.stem: {"image_id": p.stem, "mask": str(p.relative_to(path)), "scores": "", "status": "ok",
                         "error": ""} for p in pngs}
        return cls(path, {}, rows)

    @property
    def ok_ids(self) -> list[str]:
        return [i for i, r in self.rows.items() if r.get("status") == "ok"]

    def has(self, image_id: str) -> bool:
        row = self.rows.get(image_id)
        return row is not None and row.get("status") == "ok"

    def _row(self, image_id: str) -> dict:
        row = self.rows.get(image_id)
        if row is None or row.get("status") != "ok":
            why = "not in its manifest" if row is None else f"failed there: {row.get('error', '')}"
            raise ImageError(f"{self.path}: no output for image {image_id!r} ({why}); re-run that stage")
        return row

    def mask(self, image_id: str, num_classes: int | None = None) -> np.ndarray:
        """The (H, W) uint8 mask of ``image_id``. Values outside ``{0..K-1, 255}`` raise ImageError naming the file,
        with K = ``num_classes`` or else the class count recorded in the folder's stage.json."""
        if num_classes is None:
            num_classes = (self.info.get("inputs") or {}).get("dataset", {}).get("classes")
        return read_mask(self.path / self._row(image_id)["mask"], num_classes)

    def scores(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        rel = self._row(image_id).get("scores", "")
        if not rel:
            raise ImageError(f"{self.path}: stage keeps no scores for {image_id!r}; use a stage that writes scores/")
        return read_scores(self.path / rel)

    def scores_at(self, image_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`scores` resized (bilinear) to ``shape`` (H, W) when stored at another size (e.g. CAMs kept at
        half size), and their class ids."""
        scores, class_ids = self.scores(image_id)
        if scores.shape[1:] != tuple(shape):
            import cv2

            scores = np.stack([cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for m in scores]) \
                if len(scores) else np.zeros((0,) + tuple(shape), np.float32)
        return scores, class_ids

    @property
    def has_scores(self) -> bool:
        return any(r.get("scores") for r in self.rows.values())
