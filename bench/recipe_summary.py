"""Print a markdown table of a recipe run (``wsss run`` / ``wsss demo``): per step its folder, what it made, its
wall time in the recipe run and its quality, read from RUN/run.json and each stage's stage.json.

    python bench/recipe_summary.py runs/voc_guided
"""

from __future__ import annotations

import sys
from pathlib import Path

from wsss.io import read_json


def _fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def summary(run_dir: Path) -> str:
    run = read_json(run_dir / "run.json")
    lines = [f"run `{run_dir}` · recipe `{run['recipe']}` · dataset `{run['dataset']}`", "",
             "| step | folder | split | made | status (last call) | wall s | mIoU | labelled mIoU | coverage % |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for step in run["steps"]:
        path = run_dir / step["folder"]
        info = read_json(path / "stage.json") if (path / "stage.json").exists() else {}
        quality = info.get("quality") or {}
        counts = info.get("counts") or {}
        training = info.get("training") or {}
        if training:
            made = f"{training.get('iterations_done')} it"
            seconds = info.get("wall_seconds_total")
        else:
            made = f"{counts.get('ok', '–')} img" if counts else "–"
            seconds = (info.get("timings") or {}).get("seconds")
        if step.get("wall_seconds"):
            seconds = step["wall_seconds"]  # wall time of the recipe calls that made the folder, training included
        elif step.get("status") == "ran" and step.get("seconds") is not None:
            seconds = step["seconds"]  # this call's wall time of the step
        lines.append(f"| {step['name']} | {step['folder']} | {step.get('split') or '–'} | {made} | "
                     f"{step.get('status', '–')} | {_fmt(seconds, 0)} | {_fmt(quality.get('miou'))} | "
                     f"{_fmt(quality.get('labelled_miou'))} | {_fmt(quality.get('coverage'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
        print()
