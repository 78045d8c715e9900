"""Overlays, contact sheets and the HTML report."""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .conventions import IGNORE, palette_for
from .io import read_image


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W) label mask -> (H, W, 3) uint8 colours (255 drawn in the palette's ignore colour)."""
    palette = palette_for(256) if palette is None else palette
    return palette[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray | None = None, alpha: float = 0.55) -> np.ndarray:
    """Blend a colour-coded mask over an RGB image; background stays as the image, 255 is hatched grey."""
    colours = colorize(mask, palette).astype(np.float32)
    out = image.astype(np.float32)
    labelled = (mask != 0)[..., None]
    out = np.where(labelled, (1 - alpha) * out + alpha * colours, out)
    unsure = mask == IGNORE
    if unsure.any():
        yy, xx = np.indices(mask.shape)
        hatch = unsure & (((yy + xx) // 3) % 2 == 0)
        out[hatch] = 0.5 * out[hatch] + 0.5 * 255
    return np.clip(out, 0, 255).astype(np.uint8)


# ================================================================================================ HTML report
# ``wsss report RUN`` writes RUN/report.html and its pictures in RUN/report/. Plain HTML + CSS + inline SVG: no
# script, no web fonts, no CDN, so the page opens from disk and from an archive years later.

STAGE_ORDER = ("seeds", "labels", "refined", "train", "predictions")
SERIES_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                  "#9c755f", "#bab0ac")


@dataclass
class ReportStage:
    """One stage folder of a run as the report shows it."""

    name: str          # step name (recipe) or "<stage>/<method>"
    folder: str        # "<stage>/<method>" relative to the run
    path: Path
    info: dict
    has_masks: bool
    wall_seconds: float | None = None  # wall time the recipe runs spent making the folder (training included)

    @property
    def quality(self) -> dict | None:
        return self.info.get("quality") or None


def find_stages(run_dir: Path) -> list[ReportStage]:
    """The run's stage folders: the recipe's order from ``run.json`` first, then any other ``<stage>/<method>/``
    with a ``stage.json`` (pipeline order seeds -> labels -> refined -> train -> predictions)."""
    from .io import read_json

    run_dir = Path(run_dir)
    named: dict[str, str] = {}
    walls: dict[str, float] = {}
    order: list[str] = []
    run_info = run_dir / "run.json"
    if run_info.exists():
        for step in read_json(run_info).get("steps", []):
            named[step["folder"]] = step["name"]
            order.append(step["folder"])
            if step.get("wall_seconds"):
                walls[step["folder"]] = step["wall_seconds"]
    found = sorted(
        (p.parent for p in run_dir.glob("*/*/stage.json")),
        key=lambda p: (STAGE_ORDER.index(p.parent.name) if p.parent.name in STAGE_ORDER else len(STAGE_ORDER),
                       p.stat().st_mtime, p.name),
    )
    for path in found:
        rel = f"{path.parent.name}/{path.name}"
        if rel not in order:
            order.append(rel)
    stages = []
    for rel in order:
        path = run_dir / rel
        if not (path / "stage.json").exists():
            continue
        info = read_json(path / "stage.json")
        has_masks = (path / "manifest.csv").exists() and (path / "masks").is_dir()
        stages.append(ReportStage(named.get(rel, rel), rel, path, info, has_masks, walls.get(rel)))
    return stages


def _open_run_dataset(run_dir: Path, stages: list[ReportStage]):
    """The dataset the run was made from (for images and GT), or None when it is gone."""
    from .datasets import open_dataset
    from .errors import WsssError
    from .io import read_json

    candidates = []
    for st in stages:
        desc = (st.info.get("inputs") or {}).get("dataset") or {}
        if desc.get("path"):
            candidates.append((desc["path"], desc.get("split")))
    if (run_dir / "run.json").exists():
        path = read_json(run_dir / "run.json").get("dataset")
        if path:
            candidates.append((path, None))
    for path, split in candidates:
        try:
            return open_dataset(path, split)
        except (WsssError, OSError):
            continue
    return None


def _pick_samples(stages: list[ReportStage], dataset, count: int) -> list[str]:
    """Up to ``count`` image ids spread evenly over the ids that most mask stages have, in dataset order."""
    from .folders import StageFolder

    mask_stages = [s for s in stages if s.has_masks]
    if not mask_stages:
        return []
    votes: dict[str, int] = {}
    for st in mask_stages:
        for image_id in StageFolder.open(st.path).ok_ids:
            votes[image_id] = votes.get(image_id, 0) + 1
    if not votes:
        return []
    if dataset is not None:
        rank = {i: k for k, i in enumerate(dataset.ids)}
    else:
        rank = {i: k for k, i in enumerate(sorted(votes))}
    picked: list[str] = []
    # images every stage has first; stages over other splits (predictions on val) then add their own images
    for level in sorted(set(votes.values()), reverse=True):
        ids = sorted((i for i in votes if votes[i] == level), key=lambda i: (rank.get(i, len(rank)), i))
        room = count - len(picked)
        if room <= 0:
            break
        if len(ids) > room:
            ids = [ids[k] for k in np.linspace(0, len(ids) - 1, room).round().astype(int)]
        picked += ids
    return picked


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _tile_scale(shape, target: int = 240) -> int:
    """Integer upscale so that tiny images (the demo's 128x160) are not shown as stamps."""
    return max(1, target // max(shape[:2]))


def _save_tile(path: Path, array: np.ndarray, scale: int) -> None:
    from .io import write_jpeg, write_png

    if scale > 1:
        array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
    if path.suffix == ".png":
        write_png(path, array)
    else:
        write_jpeg(path, array, quality=88)


def _heat_colour(value: float) -> str:
    """IoU 0..100 -> a light-to-dark blue-green scale (perceptually ordered, readable in print)."""
    stops = [(0, (247, 251, 255)), (25, (198, 219, 239)), (50, (107, 174, 214)), (75, (33, 113, 181)),
             (100, (8, 48, 107))]
    value = min(100.0, max(0.0, value))
    for (v0, c0), (v1, c1) in zip(stops, stops[1:]):
        if value <= v1:
            t = (value - v0) / (v1 - v0)
            r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c0, c1))
            return f"rgb({r},{g},{b})"
    return "rgb(8,48,107)"


_NO_QUALITY = '<p class="muted">No stage has a quality table (the dataset has no GT masks).</p>'


def _per_class_series(stages: list[ReportStage], classes) -> tuple[list, list[str]]:
    """``(series, names)`` of the per-class charts: ``(stage, per-class quality)`` of each stage that has one, and
    the class names any of them scores, in the dataset's order (unknown names after, sorted)."""
    series = [(st, (st.quality or {}).get("per_class") or {}) for st in stages]
    series = [(st, pc) for st, pc in series if pc]
    names = [c for c in classes if any(c in pc for _, pc in series)]
    names += sorted({c for _, pc in series for c in pc} - set(names))
    return series, names


def per_class_iou_heatmap(stages: list[ReportStage], classes, palette, width: int = 1100) -> str:
    """An inline SVG heat map: one row per stage, one column per class, the IoU written in each cell."""
    series, names = _per_class_series(stages, classes)
    if not series:
        return _NO_QUALITY
    label_w, top, row_h, mean_w = 150, 92, 28, 66
    cell_w = max(34.0, min(96.0, (width - label_w - mean_w - 10) / max(1, len(names))))
    width = int(label_w + cell_w * len(names) + mean_w + 10)
    height = top + row_h * len(series) + 8
    out = [f'<svg class="chart heat" xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{width}px" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="per-class IoU per stage (heat map)">']
    name_to_id = {c: k for k, c in enumerate(classes)}
    for col, cls in enumerate(names):  # column heads: class swatch + name, rotated
        x = label_w + col * cell_w + cell_w / 2
        k = name_to_id.get(cls)
        if k is not None:
            r, g, b = (int(v) for v in palette[k])
            out.append(f'<rect x="{x - 5:.1f}" y="{top - 16}" width="10" height="10" rx="2" fill="rgb({r},{g},{b})" '
                       f'stroke="#0003"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 22}" class="colhead" transform="rotate(-40 {x:.1f} {top - 22})">'
                   f'{_esc(cls)}</text>')
    out.append(f'<text x="{label_w + cell_w * len(names) + mean_w / 2 + 4:.1f}" y="{top - 8}" class="meanhead">'
               f'mIoU</text>')
    for row, (st, pc) in enumerate(series):
        y = top + row * row_h
        out.append(f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" class="rowhead">{_esc(st.name)}</text>')
        for col, cls in enumerate(names):
            x = label_w + col * cell_w
            value = (pc.get(cls) or {}).get("iou")
            if value is None:
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{cell_w - 2:.1f}" height="{row_h - 2}" class="na"/>')
                continue
            ink = "#fff" if value >= 55 else "#1d2733"
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{cell_w - 2:.1f}" height="{row_h - 2}" rx="3" '
                       f'fill="{_heat_colour(value)}"><title>{_esc(st.name)} · {_esc(cls)}: IoU {value:.1f}</title>'
                       f'</rect>')
            out.append(f'<text x="{x + cell_w / 2 - 1:.1f}" y="{y + row_h / 2 + 3.5:.1f}" class="cell" '
                       f'style="fill:{ink}">{value:.0f}</text>')
        miou = (st.quality or {}).get("miou")
        if miou is not None:
            x = label_w + cell_w * len(names) + 6
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{mean_w - 4}" height="{row_h - 2}" rx="3" '
                       f'fill="{_heat_colour(miou)}" stroke="#1d2733" stroke-width="1"/>')
            out.append(f'<text x="{x + (mean_w - 4) / 2:.1f}" y="{y + row_h / 2 + 3.5:.1f}" class="cell mean" '
                       f'style="fill:{"#fff" if miou >= 55 else "#1d2733"}">{miou:.1f}</text>')
    out.append("</svg>")
    return "\n".join(out)


def per_class_iou_svg(stages: list[ReportStage], classes, palette, width: int = 920) -> str:
    """An inline SVG grouped bar chart: one row per class, one bar per stage (headline IoU, percent)."""
    series, names = _per_class_series(stages, classes)
    if not series:
        return _NO_QUALITY
    bar_h, gap, label_w, top, right = 11, 10, 130, 34, 60
    group_h = bar_h * len(series) + gap
    height = top + group_h * len(names) + 24
    plot_w = width - label_w - right
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{width}px" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="per-class IoU per stage">']
    for tick in range(0, 101, 20):  # grid + axis labels
        x = label_w + plot_w * tick / 100
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 20}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 12}" class="tick">{tick}</text>')
    out.append(f'<text x="{label_w + plot_w / 2:.0f}" y="{height - 4}" class="axis">IoU (%) — 255 counts as a '
               f'miss</text>')
    name_to_id = {c: k for k, c in enumerate(classes)}
    for row, cls in enumerate(names):
        y0 = top + row * group_h
        k = name_to_id.get(cls)
        if k is not None:
            r, g, b = (int(v) for v in palette[k])
            out.append(f'<rect x="4" y="{y0 + group_h / 2 - 11:.1f}" width="12" height="12" rx="2" '
                       f'fill="rgb({r},{g},{b})" stroke="#0003"/>')
        out.append(f'<text x="22" y="{y0 + group_h / 2 - 1:.1f}" class="cls">{_esc(cls)}</text>')
        for s, (st, pc) in enumerate(series):
            value = (pc.get(cls) or {}).get("iou")
            y = y0 + s * bar_h
            colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
            if value is None:
                out.append(f'<text x="{label_w + 3}" y="{y + bar_h - 2}" class="na">n/a</text>')
                continue
            w = max(1.0, plot_w * value / 100)
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{colour}">'
                       f'<title>{_esc(st.name)} · {_esc(cls)}: IoU {value:.1f}</title></rect>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 2.5}" class="val">{value:.1f}</text>')
    out.append("</svg>")
    legend = "".join(f'<span class="series"><i style="background:{SERIES_COLOURS[s % len(SERIES_COLOURS)]}"></i>'
                     f'{_esc(st.name)}</span>' for s, (st, _) in enumerate(series))
    return f'<div class="series-legend">{legend}</div>\n' + "\n".join(out)


def _stage_seconds(st: ReportStage) -> float | None:
    """Wall time of a stage: the recipe run's time of the step (training included) when it ran there, else the
    image runner's timing, or a training stage's total wall time."""
    if st.wall_seconds is not None:
        return st.wall_seconds
    seconds = (st.info.get("timings") or {}).get("seconds")
    if seconds is None:
        seconds = st.info.get("wall_seconds_total")
    return seconds


def _quality_table(stages: list[ReportStage]) -> str:
    best = max((st.quality or {}).get("miou") or -1 for st in stages) if stages else -1
    rows = []
    for s, st in enumerate(stages):
        q = st.quality or {}
        counts = st.info.get("counts") or {}
        miou = q.get("miou")
        bar = (f'<span class="bar"><span style="width:{max(0.0, min(100.0, miou)):.1f}%;background:'
               f'{SERIES_COLOURS[s % len(SERIES_COLOURS)]}"></span></span>') if miou is not None else ""
        failed = counts.get("failed", 0) or 0
        status = st.info.get("status", "?")
        seconds = _stage_seconds(st)
        sub = st.folder
        training = st.info.get("training") or {}
        if training.get("iterations_done") is not None:
            sub += f" · {training['iterations_done']} it" + (f" · val {q['images']} img" if q.get("images") else "")
        rows.append(
            f'<tr class="{"best" if miou is not None and miou == best else ""}">'
            f'<td class="stage"><b>{_esc(st.name)}</b><br><span class="muted">{_esc(sub)}</span></td>'
            f'<td class="num">{_esc(counts.get("images", q.get("images", "–")))}</td>'
            f'<td class="num miou">{_fmt(miou)} {bar}</td>'
            f'<td class="num">{_fmt(q.get("labelled_miou"))}</td>'
            f'<td class="num">{_fmt(q.get("coverage"))}</td>'
            f'<td class="num">{_fmt(q.get("mean_precision"))}</td>'
            f'<td class="num">{_fmt(q.get("mean_recall"))}</td>'
            f'<td class="num">{_fmt(q.get("pixel_accuracy"))}</td>'
            f'<td class="num {"bad" if failed else ""}">{failed}</td>'
            f'<td class="num">{_fmt(seconds)}</td>'
            f'<td>{_esc(status)}</td></tr>')
    return ('<table class="quality"><thead><tr><th>stage</th><th>images</th><th>mIoU</th><th>labelled mIoU</th>'
            '<th>coverage %</th><th>precision</th><th>recall</th><th>pixel acc.</th><th>failed</th>'
            '<th>seconds</th><th>status</th></tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


def _legend(classes, palette, present: set[int]) -> str:
    items = ['<span class="swatch"><i class="clear"></i>background (no tint)</span>']
    for k in sorted(present):
        if k in (0, IGNORE) or k >= len(classes):
            continue
        r, g, b = (int(v) for v in palette[k])
        items.append(f'<span class="swatch"><i style="background:rgb({r},{g},{b})"></i>{_esc(classes[k])}</span>')
    items.append('<span class="swatch"><i class="hatch"></i>unsure / ignore (255)</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def report_overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The report's tile: :func:`overlay` a bit stronger, plus a thin light outline along label boundaries so
    that a class edge is visible even where its colour is close to the image's."""
    out = overlay(image, mask, palette, alpha=0.62)
    edge = np.zeros(mask.shape, bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[1:] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    out[edge] = (0.35 * out[edge] + 0.65 * 255).astype(np.uint8)
    return out


def _image_miou(gt: np.ndarray | None, mask: np.ndarray, num_classes: int) -> float | None:
    if gt is None or gt.shape != mask.shape:
        return None
    from .metrics import confusion_matrix, scores_from_confusion

    return scores_from_confusion(confusion_matrix(gt, mask, num_classes))["miou"]


def _sample_grid(run_dir: Path, out_dir: Path, stages: list[ReportStage], dataset, ids: list[str],
                 palette) -> tuple[str, set[int]]:
    """Write the sample tiles and return the grid's HTML and the labels seen (for the legend)."""
    from .errors import WsssError
    from .folders import StageFolder

    mask_stages = [s for s in stages if s.has_masks]
    folders = {s.folder: StageFolder.open(s.path) for s in mask_stages}
    num_classes = dataset.num_classes if dataset is not None else 256
    present: set[int] = set()
    head = ['<th>image</th>'] + (['<th>ground truth</th>'] if dataset is not None else [])
    head += [f'<th>{_esc(s.name)}</th>' for s in mask_stages]
    rows = []
    for image_id in ids:
        image = gt = None
        if dataset is not None:
            try:
                image = read_image(dataset.image_path(image_id))
                gt = dataset.load_gt(image_id)
            except WsssError:
                image = gt = None
        masks, why = {}, {}
        for s in mask_stages:
            folder = folders[s.folder]
            masks[s.folder] = None
            if image_id not in folder.rows:
                why[s.folder] = "not in this stage's images"
            elif not folder.has(image_id):
                why[s.folder] = "failed: " + str(folder.rows[image_id].get("error", ""))[:80]
            else:
                try:
                    masks[s.folder] = folder.mask(image_id)
                except WsssError as exc:
                    why[s.folder] = f"unreadable: {str(exc)[:80]}"
        shape = image.shape if image is not None else next((m.shape for m in masks.values() if m is not None), None)
        if shape is None:
            continue
        scale = _tile_scale(shape)
        stem = _slug(image_id)
        cells = []
        if image is not None:
            _save_tile(out_dir / f"{stem}.jpg", image, scale)
            cells.append(f'<td><img src="{out_dir.name}/{stem}.jpg" alt="{_esc(image_id)}" loading="eager">'
                         f'<div class="cap">{_esc(image_id)}</div></td>')
        else:
            cells.append(f'<td class="missing">{_esc(image_id)}<br>(image not found)</td>')
        if dataset is not None:
            if gt is not None:
                present |= set(np.unique(gt).tolist())
                tile = report_overlay(image, gt, palette) if image is not None and image.shape[:2] == gt.shape \
                    else colorize(gt, palette)
                _save_tile(out_dir / f"{stem}__gt.jpg", tile, scale)
                cells.append(f'<td><img src="{out_dir.name}/{stem}__gt.jpg" alt="GT {_esc(image_id)}">'
                             f'<div class="cap">ground truth</div></td>')
            else:
                cells.append('<td class="missing">no GT</td>')
        for s in mask_stages:
            mask = masks[s.folder]
            if mask is None:
                cells.append(f'<td class="missing">{_esc(why.get(s.folder, "no mask"))}</td>')
                continue
            present |= set(np.unique(mask).tolist())
            tile = report_overlay(image, mask, palette) if image is not None and image.shape[:2] == mask.shape \
                else colorize(mask, palette)
            name = f"{stem}__{_slug(s.folder)}.jpg"
            _save_tile(out_dir / name, tile, scale)
            score = _image_miou(gt, mask, num_classes)
            cap = f"mIoU {score:.0f}" if score is not None else ""
            unsure = float((mask == IGNORE).mean() * 100)
            if unsure >= 0.5:
                cap += f" · {unsure:.0f}% unsure"
            cells.append(f'<td><img src="{out_dir.name}/{name}" alt="{_esc(s.name)} {_esc(image_id)}">'
                         f'<div class="cap">{_esc(cap)}</div></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    many = " many" if len(head) > 6 else ""
    grid = (f'<div class="gridwrap"><table class="grid{many}"><thead><tr>' + "".join(head) + "</tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table></div>")
    return grid, present


_CSS = """
:root { --ink:#1d2733; --muted:#6b7785; --line:#e3e8ee; --bg:#f6f8fa; --accent:#4e79a7; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--ink);
       background:var(--bg); }
header { background:linear-gradient(120deg,#22364d,#3d6690); color:#fff; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:650; }
header .meta { opacity:.85; font-size:13px; }
.flow { margin-top:12px; display:flex; flex-wrap:wrap; gap:6px; align-items:center; }
.flow span.step { background:#ffffff22; border:1px solid #ffffff44; border-radius:14px; padding:2px 10px;
                  font-size:12.5px; }
.flow span.step small { opacity:.75; }
main { padding:18px 32px 40px; max-width:1600px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px; margin:16px 0;
          box-shadow:0 1px 2px #0000000a; }
h2 { font-size:17px; margin:0 0 10px; }
.muted { color:var(--muted); font-size:12px; }
.cards { display:flex; gap:12px; flex-wrap:wrap; margin:4px 0 12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:140px; background:#fbfcfd; }
.card .v { font-size:22px; font-weight:650; }
.card .k { color:var(--muted); font-size:12px; }
table.quality { border-collapse:collapse; width:100%; }
table.quality th { text-align:right; font-weight:600; color:var(--muted); font-size:12px; padding:6px 8px;
                   border-bottom:2px solid var(--line); }
table.quality th:first-child, table.quality td:first-child { text-align:left; }
table.quality td { padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:middle; }
table.quality td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.quality td.bad { color:#c0392b; font-weight:600; }
table.quality tr.best td.miou { font-weight:700; }
.bar { display:inline-block; width:90px; height:8px; background:#edf0f3; border-radius:4px; margin-left:6px;
       vertical-align:middle; overflow:hidden; }
.bar span { display:block; height:100%; border-radius:4px; }
svg.chart text { font:11px system-ui,"DejaVu Sans",sans-serif; fill:#333; }
svg.chart text.tick { text-anchor:middle; fill:#888; }
svg.chart text.axis { text-anchor:middle; fill:#666; }
svg.chart text.cls { font-size:12px; dominant-baseline:middle; }
svg.chart text.val { fill:#555; font-size:10px; }
svg.chart text.na { fill:#aaa; font-size:10px; }
svg.chart line.grid { stroke:#e6e9ed; }
svg.heat text.colhead { font-size:12px; fill:#333; }
svg.heat text.rowhead { font-size:12.5px; text-anchor:end; fill:#1d2733; }
svg.heat text.meanhead { font-size:12px; font-weight:600; text-anchor:middle; fill:#333; }
svg.heat text.cell { font-size:11.5px; text-anchor:middle; font-variant-numeric:tabular-nums; }
svg.heat text.cell.mean { font-weight:700; }
svg.heat rect.na { fill:#f1f3f5; }
.series-legend { margin-bottom:6px; }
.series, .swatch { display:inline-flex; align-items:center; margin:2px 14px 2px 0; font-size:12.5px; }
.series i, .swatch i { display:inline-block; width:14px; height:14px; border-radius:3px; margin-right:6px;
                       border:1px solid #0002; }
.swatch i.clear { background:linear-gradient(135deg,#fff 45%,#c9d3dd 45% 55%,#fff 55%); }
.swatch i.hatch { background:repeating-linear-gradient(45deg,#e0e0c0 0 3px,#ffffff 3px 6px); }
.legend { margin:4px 0 10px; }
.gridwrap { overflow-x:auto; }
table.grid { border-collapse:separate; border-spacing:6px; }
table.grid th { font-size:12px; color:var(--muted); font-weight:600; text-align:center; }
table.grid td { vertical-align:top; text-align:center; }
table.grid img { display:block; width:200px; height:auto; border-radius:6px; border:1px solid var(--line);
                 image-rendering:auto; }
table.grid.many img { width:160px; }
table.grid td:first-child, table.grid th:first-child { position:sticky; left:0; background:#fff; z-index:1; }
table.grid.many td.missing { width:160px; }
table.grid td.missing { width:200px; height:150px; vertical-align:middle; color:var(--muted); background:#fafafa; border:1px dashed var(--line);
                        border-radius:6px; font-size:12px; }
.cap { font-size:11.5px; color:var(--muted); margin-top:2px; }
details { margin:6px 0; }
details summary { cursor:pointer; font-weight:600; }
pre { background:#f4f6f8; padding:8px 10px; border-radius:6px; font-size:12px; overflow-x:auto; }
footer { color:var(--muted); font-size:12px; padding:0 32px 24px; }
"""


def write_report(run_dir: str | Path, *, samples: int = 8, title: str | None = None) -> Path:
    """Write ``RUN/report.html`` (+ its pictures in ``RUN/report/``) for the stage folders of ``run_dir``.

    The page holds the per-stage quality table (from each ``stage.json``), a per-class IoU bar chart (inline SVG),
    and for ``samples`` images a grid: image, ground truth, each mask stage as a colour overlay, with the class
    legend. Returns the path of the HTML file.
    """
    from .errors import StageError
    from .io import read_json, write_bytes

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StageError(f"{run_dir}: run folder not found; give the folder that 'wsss run' or 'wsss demo' wrote")
    stages = find_stages(run_dir)
    if not stages:
        raise StageError(f"{run_dir}: no stage folders (RUN/<stage>/<method>/stage.json) here; run a stage first")
    run_info = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    dataset = _open_run_dataset(run_dir, stages)
    classes = list(dataset.classes) if dataset is not None else [str(k) for k in range(256)]
    palette = palette_for(256, dataset.palette_name if dataset is not None else None)
    out_dir = run_dir / "report"
    if out_dir.exists():
        for old in out_dir.iterdir():
            if old.is_file() and old.suffix in (".jpg", ".png"):
                old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = _pick_samples(stages, dataset, samples)
    grid, present = _sample_grid(run_dir, out_dir, stages, dataset, ids, palette)

    name = title or run_info.get("recipe") or run_dir.resolve().name
    data_desc = ""
    if dataset is not None:
        data_desc = (f"{_esc(dataset.root)} · {dataset.layout} layout · split {_esc(dataset.split)} · "
                     f"{len(dataset.ids)} images · {dataset.num_classes} classes")
    reads = {step["name"]: list((step.get("inputs") or {}).values()) for step in run_info.get("steps", [])}
    chips = []
    for st in stages:
        src = reads.get(st.name) or []
        via = f' <small>← {_esc(", ".join(src))}</small>' if src else ""
        chips.append(f'<span class="step" title="{_esc(st.folder)}">{_esc(st.name)}{via}</span>')
    flow = "".join(chips)
    scored = [st for st in stages if (st.quality or {}).get("miou") is not None]
    best = max(scored, key=lambda st: st.quality["miou"]) if scored else None
    total_s = sum(_stage_seconds(st) or 0 for st in stages)
    failed = sum((st.info.get("counts") or {}).get("failed") or 0 for st in stages)
    cards = [("stages", str(len(stages))),
             ("best mIoU", f"{best.quality['miou']:.1f}" if best else "–"),
             ("best stage", _esc(best.name) if best else "–"),
             ("failed images", str(failed)),
             ("stage time", f"{total_s:.0f} s")]
    details = []
    for st in stages:
        cfg = json.dumps(st.info.get("config", {}), indent=2, default=str)
        fails = st.info.get("failures") or []
        fail_html = ""
        if fails:
            fail_html = "<p><b>failures</b></p><ul>" + "".join(
                f"<li>{_esc(f.get('image_id'))}: {_esc(f.get('reason'))}</li>" for f in fails[:20]) + "</ul>"
        inputs = (st.info.get("inputs") or {}).get("upstream") or {}
        up = ", ".join(f"{_esc(k)} = {_esc(v)}" for k, v in inputs.items()) or "dataset only"
        details.append(f'<details><summary>{_esc(st.name)} <span class="muted">({_esc(st.folder)}, '
                       f'{_esc(st.info.get("method", ""))}; reads {up})</span></summary><pre>{_esc(cfg)}</pre>'
                       f'{fail_html}</details>')
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsss report · {_esc(name)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{_esc(name)}</h1>
<div class="meta">{data_desc or "dataset not found: images and GT are not shown"}</div>
<div class="flow">{flow}</div></header>
<main>
<section id="summary"><h2>Quality of every stage</h2>
<div class="cards">{"".join(f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div></div>'
                             for k, v in cards)}</div>
{_quality_table(stages)}
<p class="muted">Scores against the dataset's GT masks, confusion summed over all images of the stage, in percent.
mIoU counts an unsure pixel (255) as a miss; labelled mIoU leaves unsure pixels out and is read together with
coverage (share of pixels labelled).</p></section>
<section id="per-class"><h2>Per-class IoU</h2>
<p class="muted">Headline IoU (%) of every class for every stage that has a quality table; darker is better, a grey
cell is a class the stage's images do not contain.</p>
{per_class_iou_heatmap(stages, classes, palette) if len(stages) > 4 else per_class_iou_svg(stages, classes, palette)}
</section>
<section id="samples"><h2>Sample images</h2>
<p class="muted">{len(ids)} images spread over the run; masks drawn over the image (background left clear);
the caption is the image's own mIoU against GT.</p>
{_legend(classes, palette, present)}
{grid}</section>
<section id="configs"><h2>Stage configs</h2>{"".join(details)}</section>
</main>
<footer>wsss {__import__("wsss").__version__} · written {time.strftime("%Y-%m-%d %H:%M")} from {_esc(run_dir)}</footer>
</body></html>
"""
    path = run_dir / "report.html"
    write_bytes(path, body.encode("utf-8"))
    return path
