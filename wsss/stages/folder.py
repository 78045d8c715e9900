"""Reading a finished stage folder (the next stage reads the upstream ``manifest.csv``, never a glob)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError, StageError
from ..io import read_csv, read_json, read_mask, read_scores


@dataclass
class StageFolder:
    """A stage folder: ``stage.json`` + ``manifest.csv`` + ``masks/`` (+ ``scores/``).

    A plain folder of PNG masks (no manifest) is accepted too, so any mask folder can be evaluated or trained on.
    """

    path: Path
    info: dict = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> "StageFolder":
        path = Path(path)
        if not path.is_dir():
            raise StageError(f"{path}: stage folder not found; run the stage first or fix the path")
        manifest = path / "manifest.csv"
        if manifest.exists():
            info = read_json(path / "stage.json") if (path / "stage.json").exists() else {}
            rows: dict[str, dict] = {}
            for r in read_csv(manifest):  # a duplicate id's failed row never hides the id's finished row
                if r["image_id"] not in rows or rows[r["image_id"]].get("status") != "ok":
                    rows[r["image_id"]] = r
            return cls(path, info, rows)
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

    @property
    def has_scores(self) -> bool:
        return any(r.get("scores") for r in self.rows.values())
