"""``wsss report``: the HTML report's content, and the page rendered in a real headless browser (Debian's chromium).

The browser test loads report.html from disk with a small probe script added (a copy of the page beside it), which
records, after load, every image's natural size and the rendered size of the tables and the chart into a DOM
attribute; ``--dump-dom`` hands that back. It also saves a screenshot. Without a chromium it skips, except under CI
(``CI`` set), where ``.ci/install-chromium.sh`` installs one and a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cli import main
from wsss.config import ThresholdConfig
from wsss.datasets import open_dataset
from wsss.io import read_json
from wsss.report import find_stages, overlay, report_overlay, write_report
from wsss.stages.runner import (
    ImageResult,
    prepare_stage_dir,
    run_images,
    run_method_stage,
)
from wsss.stages.seeds import SEED_METHODS


@dataclass
class GtJob:
    """A known-answer stage for the report: returns the GT itself (mIoU 100)."""

    needs_image = False

    def __call__(self, sample, upstream):
        return ImageResult(sample.gt.copy())


@dataclass(frozen=True)
class _NoConfig:
    pass


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory) -> Path:
    """A run with two mask stages: threshold seeds and a GT copy (so one column is known to be perfect)."""
    run = tmp_path_factory.mktemp("report") / "run"
    dataset = open_dataset(demo_root, "trainval")
    run_method_stage("seeds", "threshold", SEED_METHODS["threshold"], ThresholdConfig(), dataset, run)
    stage_dir = run / "labels" / "oracle"
    prepare_stage_dir(stage_dir, stage="labels", method="oracle", config=_NoConfig(), dataset=dataset)
    run_images(stage_dir, dataset=dataset, job=GtJob())
    return run


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if self.tags:
            self.text.setdefault(self.tags[-1][0], []).append(data)


def _parse(html: str) -> _Collect:
    parser = _Collect()
    parser.feed(html)
    return parser


def test_report_content(run_dir):
    path = write_report(run_dir, samples=5)
    assert path == run_dir / "report.html"
    html = path.read_text()
    parsed = _parse(html)
    # no network: no script, no external URL
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    # quality table: one row per stage, values from stage.json
    stages = find_stages(run_dir)
    assert [s.folder for s in stages] == ["seeds/threshold", "labels/oracle"]
    body = html[html.index('<table class="quality">'):html.index("</table>")]
    assert body.count("<tr") == 1 + len(stages)
    thr = read_json(run_dir / "seeds/threshold/stage.json")["quality"]
    assert f"{thr['miou']:.1f}" in body and f"{thr['coverage']:.1f}" in body
    assert "100.0" in body  # the GT copy
    # sample grid: 5 rows of image + GT + 2 stages, every picture on disk beside the page
    imgs = [a["src"] for t, a in parsed.tags if t == "img"]
    assert len(imgs) == 5 * 4
    for src in imgs:
        assert not src.startswith(("/", "http")) and (run_dir / src).is_file(), src
    # per-class chart: one bar per class and stage with its IoU; the oracle's bars are all 100
    titles = re.findall(r"<title>([^<]*)</title>", html)
    oracle = [t for t in titles if t.startswith("labels/oracle")]
    assert len(oracle) == len(read_json(run_dir / "labels/oracle/stage.json")["quality"]["per_class"])
    assert all(t.endswith("IoU 100.0") for t in oracle)
    # legend: the class names seen in the samples, and the unsure swatch
    legend = html[html.index('<div class="legend">'):]
    legend = legend[:legend.index("</div>")]
    assert "unsure / ignore (255)" in legend and "background" in legend
    assert any(name in legend for name in ("disc", "square", "triangle", "ring", "cross"))


def test_report_overlay_values():
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 3:] = 1
    palette = np.zeros((256, 3), np.uint8)
    palette[1] = (200, 0, 0)
    out = report_overlay(image, mask, palette)
    assert out[0, 0].tolist() == [100, 100, 100]  # background, away from the edge: the image itself
    assert out[0, 5].tolist() == overlay(image, mask, palette, alpha=0.62)[0, 5].tolist()
    assert (out[:, 2:4] > out[:, [0]]).all()  # the boundary is drawn lighter on both sides


def test_report_cli_and_errors(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(run_dir), "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(run_dir / "report.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(main, ["report", str(empty)])
    assert bad.exit_code == 2 and "no stage folders" in bad.output


def test_report_without_dataset_still_renders_masks(run_dir, tmp_path):
    """A run whose dataset moved away: masks are drawn as colour maps, no image / GT columns."""
    copy = tmp_path / "moved"
    shutil.copytree(run_dir, copy)
    for info_path in copy.glob("*/*/stage.json"):
        info = read_json(info_path)
        info["inputs"]["dataset"]["path"] = str(tmp_path / "gone")
        info_path.write_text(json.dumps(info))
    html = write_report(copy, samples=3).read_text()
    assert "dataset not found" in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 3 * 2 and all((copy / s).is_file() for s in imgs)


# ------------------------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (im) {
    return {src: im.getAttribute('src'), complete: im.complete, w: im.naturalWidth, h: im.naturalHeight,
            shown: im.getBoundingClientRect().width};
  });
  var q = document.querySelector('table.quality'), svg = document.querySelector('svg.chart');
  var rows = document.querySelectorAll('table.quality tbody tr').length;
  var bars = svg ? svg.querySelectorAll('rect[width]').length : 0;
  document.body.setAttribute('data-probe', JSON.stringify({
    imgs: imgs, rows: rows, bars: bars,
    table: q ? [q.getBoundingClientRect().width, q.getBoundingClientRect().height] : null,
    chart: svg ? [svg.getBoundingClientRect().width, svg.getBoundingClientRect().height] : null}));
});
</script>"""


def _browser(args: list[str], timeout: int = 90) -> subprocess.CompletedProcess:
    exe = _chromium()
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--no-first-run", "--allow-file-access-from-files", "--virtual-time-budget=8000"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    if _chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on the CI machine; .ci/install-chromium.sh should have installed it")
        pytest.skip("no chromium installed (apt-get install chromium, or run .ci/install-chromium.sh)")
    path = write_report(run_dir, samples=6)
    probe = run_dir / "_probe.html"  # beside the report, so its relative image paths resolve the same way
    probe.write_text(path.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        dom = _browser(["--dump-dom", probe.resolve().as_uri()])
    finally:
        probe.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert match, "the page did not finish loading in chromium:\n" + dom.stderr[-2000:]
    import html as html_mod

    probe_data = json.loads(html_mod.unescape(match.group(1)))
    imgs = probe_data["imgs"]
    assert len(imgs) == 6 * 4
    broken = [im["src"] for im in imgs if not im["complete"] or im["w"] == 0]
    assert not broken, f"broken images in the report: {broken}"
    assert all(im["shown"] >= 100 for im in imgs), "images are drawn too small"
    assert probe_data["rows"] == 2
    assert probe_data["table"][0] > 400 and probe_data["table"][1] > 50
    assert probe_data["chart"][0] > 400 and probe_data["chart"][1] > 100
    assert probe_data["bars"] >= 2 * 6  # the chart's bars (both stages, every class of the demo set)

    shot = tmp_path / "report.png"
    out = _browser([f"--screenshot={shot}", "--window-size=1400,1800", path.resolve().as_uri()])
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1800, 1400)
    assert pixels.std() > 20, "the screenshot is blank"
    keep = os.environ.get("WSSS_REPORT_SCREENSHOT")
    if keep:  # e.g. WSSS_REPORT_SCREENSHOT=bench/out/report.png to look at it
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep)


def test_samples_cover_stages_over_other_splits(run_dir, tmp_path):
    """Predictions over val beside seeds over trainval: images of both first, then the rest; a stage that does not
    cover an image says so in its cell."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    demo = Path(read_json(copy / "seeds/threshold/stage.json")["inputs"]["dataset"]["path"])
    val = open_dataset(demo, "val")
    stage_dir = copy / "predictions" / "oracle"
    prepare_stage_dir(stage_dir, stage="predictions", method="oracle", config=_NoConfig(), dataset=val)
    run_images(stage_dir, dataset=val, job=GtJob())
    html = write_report(copy, samples=5).read_text()
    rows = html[html.index('<table class="grid">'):].split("<tr>")[2:]
    assert len(rows) == 5
    for row, image_id in zip(rows[: len(val.ids)], val.ids):  # val images (in every stage) come first
        assert f'alt="{image_id}"' in row and "not in this stage" not in row
    assert all("not in this stage&#x27;s images" in row for row in rows[len(val.ids):])


def test_heatmap_cells_hold_each_stage_and_class_iou():
    from wsss.conventions import palette_for
    from wsss.report import ReportStage, per_class_iou_heatmap

    def stage(name, ious):
        per_class = {c: {"iou": v} for c, v in ious.items()}
        return ReportStage(name, f"seeds/{name}", Path("."), {"quality": {"miou": 50.0, "per_class": per_class}},
                           True)

    stages = [stage("a", {"background": 90.0, "cat": 12.5}), stage("b", {"background": 80.0}),
              stage("c", {"background": 70.0, "cat": 99.0, "dog": 3.0})]
    svg = per_class_iou_heatmap(stages, ("background", "cat", "dog"), palette_for(256))
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    assert titles == ["a · background: IoU 90.0", "a · cat: IoU 12.5", "b · background: IoU 80.0",
                      "c · background: IoU 70.0", "c · cat: IoU 99.0", "c · dog: IoU 3.0"]
    assert svg.count('class="na"') == 3  # a/dog, b/cat, b/dog have no IoU
    assert svg.count(">50.0</text>") == 3  # the mIoU column
