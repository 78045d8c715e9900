"""``wsss candidates --method selective``: candidate masks per image into ``RUN/candidates/<method>/``.

Per image the stage writes

* ``candidates/<id>.npz``: the :class:`~wsss.label.candidates.Candidates` arrays (leaf maps, bit-packed membership,
  boxes, areas; plain numbers, read with ``allow_pickle=False``), written atomically before the mask;
* ``masks/<id>.png``: BoxSup's initial labels (for each box the candidate whose box matches it best, see
  :mod:`wsss.label.boxsup`), so the folder is evaluable like any mask stage;
* ``sheets/<id>.png`` for the first ``sheets`` images: per box (one row), the image with the box and the four
  candidates whose boxes match it best, outlined in the box's class colour, best first.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import CandidatesConfig
from ..conventions import BACKGROUND, IGNORE
from ..datasets import Dataset, Sample
from ..errors import ConfigError, ImageError, UnsafeFileError
from ..io import write_bytes
from .runner import ImageResult, MethodSpec, StageSummary, run_method_stage

CANDIDATE_KEYS = ("leaf_maps", "members_packed", "num_leaves", "strategy", "boxes", "areas")


def write_candidates(path: str | Path, candidates) -> None:
    """Write candidates as a compressed ``.npz`` (atomically)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **candidates.to_arrays())
    write_bytes(path, buf.getvalue())


def read_candidates(path: str | Path):
    """Read a candidates ``.npz`` (``allow_pickle=False``); a missing, corrupt or foreign file raises an error
    naming the file and the fix."""
    from ..label.candidates import Candidates

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: candidates file not found; run 'wsss candidates' for this dataset split first")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in CANDIDATE_KEYS if k not in data.files]
            if missing:
                raise UnsafeFileError(f"{path}: not a wsss candidates file (missing {missing}); delete it and "
                                      "re-run 'wsss candidates'")
            return Candidates.from_arrays({k: data[k] for k in CANDIDATE_KEYS})
    except UnsafeFileError:
        raise
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise UnsafeFileError(f"{path}: not a plain numeric candidates .npz ({exc}); it may be corrupt: delete it "
                              "and re-run 'wsss candidates'") from exc


def unlabelled_mask(sample: Sample, shape) -> np.ndarray | None:
    """The mask of an image without boxes: all background when it has no tags either, else all 255 (unknown);
    None when the image has boxes."""
    if len(sample.boxes):
        return None
    return np.full(shape, BACKGROUND if not sample.image_labels else IGNORE, np.uint8)


def candidate_sheet(image: np.ndarray, candidates, boxes: np.ndarray, palette: np.ndarray, per_box: int = 4,
                    tile: int = 160) -> np.ndarray:
    """An (rows, cols) grid: per box the image with its box, then its ``per_box`` best box-matching candidates."""
    import cv2

    from ..label.boxsup import box_iou
    from ..report import overlay

    h, w = image.shape[:2]
    scale = tile / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rows = []
    for cls, x0, y0, x1, y1 in boxes.tolist():
        colour = tuple(int(c) for c in palette[cls])
        framed = image.copy()
        cv2.rectangle(framed, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
        cells = [cv2.resize(framed, size, interpolation=cv2.INTER_AREA)]
        order = np.argsort(-box_iou(np.array([[x0, y0, x1, y1]]), candidates.boxes)[0], kind="stable")[:per_box]
        for m in order.tolist():
            mask = candidates.mask(m).astype(np.uint8) * cls
            cell = overlay(image, mask, palette)
            cv2.rectangle(cell, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
            cells.append(cv2.resize(cell, size, interpolation=cv2.INTER_AREA))
        while len(cells) < per_box + 1:
            cells.append(np.zeros_like(cells[0]))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0) if rows else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass
class SelectiveCandidatesJob:
    config: CandidatesConfig
    stage_dir: str
    sheet_ids: frozenset
    palette_name: str | None = None
    needs_image = True

    def __call__(self, sample: Sample, upstream: dict) -> ImageResult:
        from ..config import BoxSupConfig
        from ..conventions import palette_for
        from ..label.boxsup import initial_selection, labels_from_selection
        from ..label.candidates import generate_candidates

        kwargs = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "sheets"}
        kwargs["scales"] = kwargs.pop("felzenszwalb_scales")
        try:
            cands = generate_candidates(sample.image, **kwargs)
        except ValueError as exc:
            raise ImageError(f"image {sample.id!r}: {exc}") from exc
        write_candidates(Path(self.stage_dir) / "candidates" / f"{sample.id}.npz", cands)
        mask = unlabelled_mask(sample, sample.image.shape[:2])
        if mask is None:  # the boxes guide's round 0 with its default settings
            d = BoxSupConfig()
            selection = initial_selection(cands, sample.boxes, tie_tolerance=d.tie_tolerance, min_fit=d.min_fit)
            mask = labels_from_selection(cands, sample.boxes, selection, clip_to_box=d.clip_to_box,
                                         poor_fit=d.poor_fit, box_rest=d.box_rest)
        pngs = {}
        if sample.id in self.sheet_ids:
            pngs["sheets"] = candidate_sheet(sample.image, cands, sample.boxes, palette_for(256, self.palette_name))
        return ImageResult(mask, pngs=pngs)


def _selective_job(config: CandidatesConfig, *, stage_dir, dataset: Dataset, **_):
    from ..label.candidates import COLOUR_SPACES

    bad = [c for c in config.colour_spaces if c not in COLOUR_SPACES]
    if bad or not config.colour_spaces:
        raise ConfigError(f"--colour-spaces {','.join(config.colour_spaces)}: choose from {', '.join(COLOUR_SPACES)}")
    if not config.felzenszwalb_scales or any(s <= 0 for s in config.felzenszwalb_scales):
        raise ConfigError("--felzenszwalb-scales: give positive scales, e.g. 100,300")
    if config.max_side < 0 or not 0 <= config.min_area < 1 or config.sheets < 0:
        raise ConfigError("--max-side >= 0, 0 <= --min-area < 1 and --sheets >= 0 please")
    return SelectiveCandidatesJob(config, str(stage_dir), frozenset(dataset.ids[:config.sheets]),
                                  dataset.palette_name)


CANDIDATE_METHODS: dict[str, MethodSpec] = {
    "selective": MethodSpec(CandidatesConfig, _selective_job,
                            "selective-search grouping of Felzenszwalb superpixels (masks kept)"),
}


def run_candidates(method: str, config, dataset: Dataset, run_dir: Path, *, workers: int = 1,
                   overwrite: bool = False, overlays: int = 0) -> StageSummary:
    """Candidates of every image of ``dataset`` into ``run_dir/candidates/<method>/``."""
    return run_method_stage("candidates", method, CANDIDATE_METHODS[method], config, dataset, Path(run_dir),
                            workers=workers, overwrite=overwrite, overlays=overlays)
