"""Issue 10: bad input image by image, stage folders of another config, full disk, safe loading, flat memory.

A corpus of damaged datasets is generated here (VOC layout and folder layout). Each damaged case is checked through
the CLI: the error names the file and the fix, the manifest row and the stage.json failure list hold it, the CLI
exits non-zero, and every other image is processed with the right mask (byte-identical to a clean run, or equal
to the threshold rule applied to the documented conversion of the odd image).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsss.cli import main
from wsss.config import ConfigError, ThresholdConfig, load_yaml
from wsss.datasets import make_demo_data, open_dataset
from wsss.errors import DatasetError, DiskFullError, StageError, UnsafeFileError
from wsss.io import load_checkpoint, read_csv, read_scores, write_scores
from wsss.seeds.threshold import threshold_seeds
from wsss.folders import StageFolder

N_IMAGES = 20
SIZE = (64, 80)  # H, W


def _seeds_cli(dataset: Path, run: Path, *extra: str):
    return CliRunner().invoke(main, ["seeds", "--method", "threshold", "--dataset", str(dataset),
                                     "--run", str(run), *extra])


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _add_objects(xml: Path, objects: list[tuple[str, int, int, int, int]]) -> None:
    """Append VOC objects (name, xmin, ymin, xmax, ymax; 1-based inclusive) to an annotation file."""
    extra = "".join(f"  <object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                    f"<ymax>{d}</ymax></bndbox></object>\n" for n, a, b, c, d in objects)
    xml.write_text(xml.read_text().replace("</annotation>", extra + "</annotation>"))


def _rgb(root: Path, image_id: str) -> np.ndarray:
    with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------ VOC corpus
# id -> (what is wrong, substrings the error must hold: the file, the problem, the fix)
VOC_FAILURES = {
    "demo_0000": ("unreadable JPEG", ["JPEGImages/demo_0000.jpg", "cannot decode image", "re-export or remove it"]),
    "demo_0001": ("truncated JPEG", ["JPEGImages/demo_0001.jpg", "truncated", "re-export or remove it"]),
    "demo_0002": ("missing image", ["JPEGImages/demo_0002.jpg", "image file not found", "add the image"]),
    "demo_0007": ("GT mask of another size", ["SegmentationClass/demo_0007.png", "mask is 40x30 but the image is 80x64",
                                              "re-export it or remove it"]),
    "demo_0008": ("GT values outside {0..K, 255}", ["SegmentationClass/demo_0008.png", "mask values [77]",
                                                    "relabel them or fix the class list"]),
    "demo_0009": ("unknown class in the XML", ["Annotations/demo_0009.xml", "unknown class name 'unicorn'",
                                               "add it to the classes file"]),
    "demo_0010": ("box outside the image", ["Annotations/demo_0010.xml", "no area inside the 80x64 image",
                                            "fix or remove it"]),
    "demo_0011": ("zero-area box", ["Annotations/demo_0011.xml", "no area", "fix or remove it"]),
    "demo_0013": ("broken XML", ["Annotations/demo_0013.xml", "broken XML", "fix or delete"]),
}
# ids listed in the split file that must be rejected before any file is touched
VOC_BAD_IDS = {
    "../../evil": ["ImageSets/Segmentation/trainval.txt", "not a plain file stem", "rename the image"],
    "sub/dir": ["ImageSets/Segmentation/trainval.txt", "not a plain file stem", "rename the image"],
    "..": ["ImageSets/Segmentation/trainval.txt", "not a plain file stem", "rename the image"],
    "back\\slash": ["ImageSets/Segmentation/trainval.txt", "not a plain file stem", "rename the image"],
}
CONVERTED = {"demo_0003": "grayscale (L)", "demo_0004": "RGBA", "demo_0005": "16-bit (I;16)",
             "demo_0006": "palette (P)", "demo_0012": "box partly outside (clipped)"}
DUPLICATE = "demo_0014"


def _damage_voc(root: Path) -> dict[str, np.ndarray]:
    """Damage a clean demo set in place; returns the documented RGB conversion of each converted image."""
    jpg = root / "JPEGImages"
    rng = np.random.default_rng(5)
    (jpg / "demo_0000.jpg").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    data = (jpg / "demo_0001.jpg").read_bytes()
    (jpg / "demo_0001.jpg").write_bytes(data[: len(data) // 2])
    (jpg / "demo_0002.jpg").unlink()
    expected = {}
    # documented conversions (wsss.io.read_image): computed here independently of wsss
    rgb = _rgb(root, "demo_0003")
    gray = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    Image.fromarray(gray, "L").save(jpg / "demo_0003.png")
    expected["demo_0003"] = np.repeat(gray[..., None], 3, axis=2)
    rgb = _rgb(root, "demo_0004")
    rgba = np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(jpg / "demo_0004.png")
    expected["demo_0004"] = rgb
    rgb = _rgb(root, "demo_0005")
    gray16 = (rgb.astype(np.uint32).sum(axis=2) * 85).astype(np.uint16)  # spans 0..65025
    Image.fromarray(gray16).save(jpg / "demo_0005.png")  # 16-bit grayscale PNG
    with Image.open(jpg / "demo_0005.png") as im:
        assert im.mode.startswith("I;16")
    expected["demo_0005"] = np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    rgb = _rgb(root, "demo_0006")
    pal = Image.fromarray(rgb).quantize(32)
    pal.save(jpg / "demo_0006.png")
    lut = np.asarray(pal.getpalette(), np.uint8).reshape(-1, 3)
    expected["demo_0006"] = lut[np.asarray(pal)]
    for image_id in ("demo_0003", "demo_0004", "demo_0005", "demo_0006"):
        (jpg / f"{image_id}.jpg").unlink()
    # masks
    gt = root / "SegmentationClass"
    Image.fromarray(np.zeros((30, 40), np.uint8), "L").save(gt / "demo_0007.png")
    with Image.open(gt / "demo_0008.png") as im:
        bad = np.asarray(im).copy()
    bad[:3, :3] = 77
    Image.fromarray(bad, "L").save(gt / "demo_0008.png")
    # annotations
    ann = root / "Annotations"
    xml = ann / "demo_0009.xml"
    text = xml.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{name}</name>", "<name>unicorn</name>", 1))
    _add_objects(ann / "demo_0010.xml", [("disc", 500, 10, 600, 40)])
    _add_objects(ann / "demo_0011.xml", [("disc", 20, 10, 19, 40)])  # xmax < xmin: no area
    _add_objects(ann / "demo_0012.xml", [("disc", -20, -5, 30, 30)])  # clipped to the image
    (ann / "demo_0013.xml").write_text("<annotation><object><name>disc</name>")
    # split file: a duplicate and ids that try to leave the stage folder (with real images where they point)
    split = root / "ImageSets" / "Segmentation" / "trainval.txt"
    split.write_text(split.read_text() + f"{DUPLICATE}\n" + "".join(f"{i}\n" for i in VOC_BAD_IDS))
    Image.fromarray(_rgb(root, "demo_0015")).save(root.parent / "evil.jpg")
    (jpg / "sub").mkdir()
    Image.fromarray(_rgb(root, "demo_0015")).save(jpg / "sub" / "dir.jpg")
    return expected


@pytest.fixture(scope="module")
def voc_corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    clean = make_demo_data(base / "clean", N_IMAGES, size=SIZE, seed=11)
    ref = CliRunner().invoke(main, ["seeds", "--method", "threshold", "--dataset", str(clean),
                                    "--run", str(base / "ref")])
    assert ref.exit_code == 0, ref.output
    sandbox = base / "sandbox"
    root = sandbox / "data"
    shutil.copytree(clean, root)
    expected = _damage_voc(root)
    # the reference dataset: the clean set with each odd image replaced by its documented RGB conversion (lossless)
    # and demo_0012's box already clipped; any method must give the same masks on it as on the damaged corpus
    reference = base / "reference"
    shutil.copytree(clean, reference)
    for image_id, rgb in expected.items():
        (reference / "JPEGImages" / f"{image_id}.jpg").unlink()
        Image.fromarray(rgb).save(reference / "JPEGImages" / f"{image_id}.png")
    _add_objects(reference / "Annotations" / "demo_0012.xml", [("disc", 1, 1, 30, 30)])
    before = _files_under(sandbox)
    result = _seeds_cli(root, sandbox / "run")
    stage = sandbox / "run" / "seeds" / "threshold"
    return {"clean": clean, "ref": base / "ref" / "seeds" / "threshold", "root": root, "sandbox": sandbox,
            "reference": reference,
            "before": before, "result": result, "stage": stage, "expected": expected}


def test_voc_corpus_cli_exits_nonzero_with_a_summary(voc_corpus):
    result = voc_corpus["result"]
    failures = len(VOC_FAILURES) + len(VOC_BAD_IDS) + 1  # + the duplicate line
    assert result.exit_code == 1, result.output
    assert f"{failures} image(s) failed (all listed in manifest.csv and stage.json)" in result.stderr
    info = json.loads((voc_corpus["stage"] / "stage.json").read_text())
    assert info["status"] == "complete_with_failures"
    assert info["counts"]["failed"] == failures
    assert info["counts"]["ok"] == N_IMAGES - len(VOC_FAILURES)


@pytest.mark.parametrize("image_id", sorted(VOC_FAILURES) + sorted(VOC_BAD_IDS))
def test_voc_corpus_each_failure_names_the_file_and_the_fix(voc_corpus, image_id):
    stage = voc_corpus["stage"]
    needles = VOC_FAILURES[image_id][1] if image_id in VOC_FAILURES else VOC_BAD_IDS[image_id]
    rows = [r for r in read_csv(stage / "manifest.csv") if r["image_id"] == image_id]
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["mask"] == ""
    for needle in needles:
        assert needle in rows[0]["error"], (needle, rows[0]["error"])
    info = json.loads((stage / "stage.json").read_text())
    assert {"image_id": image_id, "reason": rows[0]["error"]} in info["failures"]
    assert not (stage / "masks" / f"{Path(image_id).name}.png").exists()


def test_voc_corpus_duplicate_id_processed_once_and_reported(voc_corpus):
    stage = voc_corpus["stage"]
    rows = [r for r in read_csv(stage / "manifest.csv") if r["image_id"] == DUPLICATE]
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "trainval.txt: line 21: duplicate id 'demo_0014'" in rows[1]["error"]
    assert "delete the repeated line" in rows[1]["error"]
    # readers of the stage folder see the finished image, not the duplicate's failure row
    assert StageFolder.open(stage).has(DUPLICATE)
    assert (stage / "masks" / f"{DUPLICATE}.png").read_bytes() == \
        (voc_corpus["ref"] / "masks" / f"{DUPLICATE}.png").read_bytes()


def test_voc_corpus_nothing_is_written_outside_the_stage_folder(voc_corpus):
    sandbox, stage = voc_corpus["sandbox"], voc_corpus["stage"]
    new = _files_under(sandbox) - voc_corpus["before"]
    outside = [p for p in new if stage not in p.parents]
    assert outside == []
    assert not (sandbox / "run" / "seeds" / "evil.png").exists()
    assert not list(stage.rglob("*.tmp")), "temporary files left behind"
    assert sorted(p.name for p in (stage / "masks").iterdir()) == sorted(
        f"demo_{k:04d}.png" for k in range(N_IMAGES) if f"demo_{k:04d}" not in VOC_FAILURES)


def test_voc_corpus_untouched_images_match_a_clean_run(voc_corpus):
    stage, ref = voc_corpus["stage"], voc_corpus["ref"]
    untouched = [f"demo_{k:04d}" for k in range(N_IMAGES)]
    untouched = [i for i in untouched if i not in VOC_FAILURES and i not in CONVERTED]
    assert len(untouched) == 6
    for image_id in untouched:
        assert (stage / "masks" / f"{image_id}.png").read_bytes() == (ref / "masks" / f"{image_id}.png").read_bytes()
    rows = {r["image_id"]: r for r in read_csv(stage / "manifest.csv") if r["status"] == "ok"}
    assert set(untouched) | set(CONVERTED) == set(rows)


@pytest.mark.parametrize("image_id", sorted(CONVERTED))
def test_voc_corpus_odd_images_are_converted_as_documented(voc_corpus, image_id):
    """Grayscale / RGBA / 16-bit / palette images: the mask is the threshold rule on the documented RGB."""
    clean = open_dataset(voc_corpus["clean"]).load(image_id)
    if image_id == "demo_0012":  # a box reaching outside the image is clipped to it
        sample = open_dataset(voc_corpus["root"]).load(image_id)
        assert sample.boxes[-1].tolist() == [1, 0, 0, 30, 30]
        image, boxes = clean.image, sample.boxes
    else:
        image, boxes = voc_corpus["expected"][image_id], clean.boxes
        assert image.shape == (*SIZE, 3)
    want = threshold_seeds(image, clean.image_labels, boxes, **ThresholdConfig().__dict__)
    with Image.open(voc_corpus["stage"] / "masks" / f"{image_id}.png") as im:
        got = np.asarray(im)
    np.testing.assert_array_equal(got, want)


def test_voc_corpus_workers_give_the_same_manifest_and_masks(voc_corpus, tmp_path):
    result = _seeds_cli(voc_corpus["root"], tmp_path / "run", "--workers", "2")
    assert result.exit_code == 1
    stage = tmp_path / "run" / "seeds" / "threshold"
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(stage / "manifest.csv")]
    ref = [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(voc_corpus["stage"] / "manifest.csv")]
    assert [(r["image_id"], r["status"], r["error"].replace(str(tmp_path), "")) for r in strip] == \
        [(r["image_id"], r["status"], r["error"]) for r in ref]
    for png in (voc_corpus["stage"] / "masks").iterdir():
        assert (stage / "masks" / png.name).read_bytes() == png.read_bytes()


def test_voc_corpus_rerun_resumes_and_keeps_the_failures(voc_corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(voc_corpus["stage"].parent.parent, run)
    result = _seeds_cli(voc_corpus["root"], run)
    assert result.exit_code == 1
    assert "0 written, 11 resumed, 14 failed" in result.output


@pytest.mark.parametrize("method", ["box", "grabcut"])
def test_voc_corpus_through_the_box_seed_methods(voc_corpus, tmp_path, method):
    """The same corpus through the other per-image seed methods: same failures, the rest equal to a run on the
    reference dataset (odd images already converted), nothing written outside the stage folder."""
    from wsss.stages.seeds import SEED_METHODS

    if method not in SEED_METHODS:
        pytest.skip(f"seed method {method} not registered")
    sandbox = tmp_path / "sandbox"
    shutil.copytree(voc_corpus["sandbox"] / "data", sandbox / "data")
    shutil.copy(voc_corpus["sandbox"] / "evil.jpg", sandbox / "evil.jpg")
    before = _files_under(sandbox)
    args = ["seeds", "--method", method, "--dataset"]
    result = CliRunner().invoke(main, [*args, str(sandbox / "data"), "--run", str(sandbox / "run")])
    ref = CliRunner().invoke(main, [*args, str(voc_corpus["reference"]), "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    assert result.exit_code == 1 and "14 image(s) failed" in result.stderr
    stage, ref_stage = sandbox / "run" / "seeds" / method, tmp_path / "ref" / "seeds" / method
    rows = read_csv(stage / "manifest.csv")
    failed = {r["image_id"]: r["error"] for r in rows if r["status"] == "failed"}
    cases = {**{k: v[1] for k, v in VOC_FAILURES.items()}, **VOC_BAD_IDS}
    assert set(failed) == set(cases) | {DUPLICATE}
    for image_id, needles in cases.items():
        assert all(n in failed[image_id] for n in needles), (image_id, failed[image_id])
    info = json.loads((stage / "stage.json").read_text())
    assert len(info["failures"]) == 14
    ok = sorted(r["image_id"] for r in rows if r["status"] == "ok")
    assert ok == sorted(set(f"demo_{k:04d}" for k in range(N_IMAGES)) - set(VOC_FAILURES))
    for image_id in ok:
        for sub, ext in (("masks", ".png"), ("scores", ".npz")):
            if (ref_stage / sub / f"{image_id}{ext}").exists():
                assert (stage / sub / f"{image_id}{ext}").read_bytes() == \
                    (ref_stage / sub / f"{image_id}{ext}").read_bytes(), (sub, image_id)
    assert [p for p in _files_under(sandbox) - before if stage not in p.parents] == []


def _grabcut_upstream_with_damaged_scores(clean: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """``(intact, damaged, sentinel)``: GrabCut seeds of ``clean`` and a copy of that stage folder whose scores of
    demo_0004 are a pickle (it would create ``sentinel`` when unpickled) and of demo_0005 truncated, and whose
    manifest row of demo_0006 is a failure ("GrabCut exploded")."""
    up = tmp_path / "up"
    assert CliRunner().invoke(main, ["seeds", "--method", "grabcut", "--dataset", str(clean), "--run",
                                     str(up)]).exit_code == 0
    intact = up / "seeds" / "grabcut"
    damaged = tmp_path / "damaged"
    shutil.copytree(intact, damaged)
    sentinel = tmp_path / "executed"
    np.savez(damaged / "scores" / "demo_0004.npz", scores=np.array([_Payload(sentinel)], dtype=object),
             class_ids=np.array([0]))
    data = (damaged / "scores" / "demo_0005.npz").read_bytes()
    (damaged / "scores" / "demo_0005.npz").write_bytes(data[: len(data) // 2])
    manifest = (damaged / "manifest.csv").read_text().replace("demo_0006,masks/demo_0006.png,scores/demo_0006.npz,ok,",
                                                              "demo_0006,,,failed,GrabCut exploded")
    (damaged / "manifest.csv").write_text(manifest)
    return intact, damaged, sentinel


def test_refine_survives_a_damaged_upstream_stage(voc_corpus, tmp_path):
    """refine --crf over an upstream seeds folder with bad masks, tampered / truncated scores, a failed row and a
    missing file: each image named with its file and fix, the others equal to a run on the intact upstream."""
    clean = voc_corpus["clean"]
    intact, damaged, sentinel = _grabcut_upstream_with_damaged_scores(clean, tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(damaged / "masks" / "demo_0001.png")
    with Image.open(damaged / "masks" / "demo_0002.png") as im:
        bad = np.asarray(im).copy()
    bad[0, 0] = 40
    Image.fromarray(bad, "L").save(damaged / "masks" / "demo_0002.png")
    (damaged / "masks" / "demo_0003.png").write_bytes(b"garbage")
    (damaged / "masks" / "demo_0007.png").unlink()
    expected = {
        "demo_0001": ["mask of 'demo_0001' is 10x10, the image 80x64"],
        "demo_0002": ["damaged/masks/demo_0002.png", "mask values [40]", "relabel them or fix the class list"],
        "demo_0003": ["damaged/masks/demo_0003.png", "cannot decode mask", "re-export it"],
        "demo_0004": ["damaged/scores/demo_0004.npz", "not a plain numeric .npz", "delete it and re-run"],
        "demo_0005": ["damaged/scores/demo_0005.npz", "delete it and re-run"],
        "demo_0006": [f"{damaged}: no output for image 'demo_0006'", "GrabCut exploded", "re-run that stage"],
        "demo_0007": ["damaged/masks/demo_0007.png", "mask file not found"],
    }
    args = ["refine", "--crf", "--dataset", str(clean), "--input"]
    result = CliRunner().invoke(main, [*args, str(damaged), "--run", str(tmp_path / "run")])
    ref = CliRunner().invoke(main, [*args, str(intact), "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    assert result.exit_code == 1 and f"{len(expected)} image(s) failed" in result.stderr
    assert not sentinel.exists()
    stage, ref_stage = tmp_path / "run" / "refined" / "crf", tmp_path / "ref" / "refined" / "crf"
    rows = read_csv(stage / "manifest.csv")
    failed = {r["image_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == set(expected)
    for image_id, needles in expected.items():
        assert all(n in failed[image_id] for n in needles), (image_id, failed[image_id])
    info = json.loads((stage / "stage.json").read_text())
    assert {f["image_id"] for f in info["failures"]} == set(expected)
    ok = [r["image_id"] for r in rows if r["status"] == "ok"]
    assert len(ok) == N_IMAGES - len(expected)
    for image_id in ok:
        assert (stage / "masks" / f"{image_id}.png").read_bytes() == \
            (ref_stage / "masks" / f"{image_id}.png").read_bytes()


# --------------------------------------------------------------------------------------- folder corpus
FOLDER_FAILURES = {
    "f_unknown_tag": ["labels.csv", "unknown class name 'unicorn'", "add it to the classes file"],
    "f_unknown_box_class": ["boxes.csv", "unknown class name 'dragon'", "add it to the classes file"],
    "f_zero_box": ["boxes.csv", "has no area", "fix or remove it"],
    "f_outside_box": ["boxes.csv", "no area inside the 80x64 image", "fix or remove it"],
    "f_text_box": ["boxes.csv", "needs id,class,x0,y0,x1,y1 numbers"],
    "f_no_image": ["images/f_no_image.png", "image file not found"],
    "f_wrong_size_mask": ["masks/f_wrong_size_mask.png", "must have the image's size"],
    "f_bad_values_mask": ["masks/f_bad_values_mask.png", "mask values [9]", "relabel them or fix the class list"],
    "../escape": ["labels.csv", "not a plain file stem", "rename the image"],
    "a/b": ["labels.csv", "not a plain file stem", "rename the image"],
}


@pytest.fixture(scope="module")
def folder_corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    voc = make_demo_data(base / "voc", 8, size=SIZE, seed=12)
    ds = open_dataset(voc)
    root = base / "sandbox" / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text((voc / "classes.txt").read_text())
    samples = [ds.load(i) for i in ds.ids]
    names = ds.classes
    ids = ["f_ok_a", "f_ok_b", "f_ok_c", "f_unknown_tag", "f_unknown_box_class", "f_zero_box", "f_outside_box",
           "f_text_box"]
    labels, boxes = ["id,labels"], ["id,class,x0,y0,x1,y1"]
    for image_id, s in zip(ids, samples):
        Image.fromarray(s.image).save(root / "images" / f"{image_id}.png")
        Image.fromarray(s.gt, "L").save(root / "masks" / f"{image_id}.png")
        labels.append(f"{image_id},{' '.join(names[c] for c in s.image_labels)}")
        boxes += [f"{image_id},{names[c]},{x0},{y0},{x1},{y1}" for c, x0, y0, x1, y1 in s.boxes.tolist()]
    labels[ids.index("f_unknown_tag") + 1] += " unicorn"
    boxes += ["f_unknown_box_class,dragon,1,1,10,10", "f_zero_box,disc,10,10,10,30",
              "f_outside_box,disc,100,70,120,90", "f_text_box,disc,1,one,10,10"]
    labels += ["f_no_image,disc", "f_wrong_size_mask,disc", "f_bad_values_mask,disc", "../escape,disc", "a/b,disc",
               "f_ok_a,square"]  # the repeated id: reported, its first row's tags are used
    for image_id, s in (("f_wrong_size_mask", samples[0]), ("f_bad_values_mask", samples[1])):
        Image.fromarray(s.image).save(root / "images" / f"{image_id}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(root / "masks" / "f_wrong_size_mask.png")
    bad = samples[1].gt.copy()
    bad[0, 0] = 9
    Image.fromarray(bad, "L").save(root / "masks" / "f_bad_values_mask.png")
    Image.fromarray(samples[2].image).save(root / "escape.png")  # where '../escape' points
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    (root / "boxes.csv").write_text("\n".join(boxes) + "\n")
    before = _files_under(base / "sandbox")
    result = _seeds_cli(root, base / "sandbox" / "run")
    return {"root": root, "result": result, "stage": base / "sandbox" / "run" / "seeds" / "threshold",
            "samples": dict(zip(ids, samples)), "sandbox": base / "sandbox", "before": before}


@pytest.mark.parametrize("image_id", sorted(FOLDER_FAILURES))
def test_folder_corpus_each_failure_names_the_file_and_the_fix(folder_corpus, image_id):
    stage = folder_corpus["stage"]
    rows = [r for r in read_csv(stage / "manifest.csv") if r["image_id"] == image_id]
    assert len(rows) == 1 and rows[0]["status"] == "failed", rows
    for needle in FOLDER_FAILURES[image_id]:
        assert needle in rows[0]["error"], (needle, rows[0]["error"])
    info = json.loads((stage / "stage.json").read_text())
    assert {"image_id": image_id, "reason": rows[0]["error"]} in info["failures"]


def test_folder_corpus_other_images_processed_and_nothing_written_outside(folder_corpus):
    result, stage = folder_corpus["result"], folder_corpus["stage"]
    assert result.exit_code == 1
    assert f"{len(FOLDER_FAILURES) + 1} image(s) failed" in result.stderr
    rows = read_csv(stage / "manifest.csv")
    dup = [r for r in rows if r["image_id"] == "f_ok_a"]
    assert [r["status"] for r in dup] == ["ok", "failed"] and "duplicate id 'f_ok_a'" in dup[1]["error"]
    assert sorted(r["image_id"] for r in rows if r["status"] == "ok") == ["f_ok_a", "f_ok_b", "f_ok_c"]
    for image_id in ("f_ok_a", "f_ok_b", "f_ok_c"):
        s = folder_corpus["samples"][image_id]  # the first labels.csv row's tags are the ones used
        want = threshold_seeds(s.image, s.image_labels, s.boxes, **ThresholdConfig().__dict__)
        with Image.open(stage / "masks" / f"{image_id}.png") as im:
            np.testing.assert_array_equal(np.asarray(im), want)
    new = _files_under(folder_corpus["sandbox"]) - folder_corpus["before"]
    assert [p for p in new if stage not in p.parents] == []


# ------------------------------------------------------------------------------------ dataset-level errors
def test_empty_split_file_is_a_clear_error_and_writes_nothing(demo_copy, tmp_path):
    (demo_copy / "ImageSets/Segmentation/val.txt").write_text("\n# nothing here\n\n")
    result = _seeds_cli(demo_copy, tmp_path / "run", "--split", "val")
    assert result.exit_code == 2
    assert "ImageSets/Segmentation/val.txt: split file is empty; list one image id a line" in result.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(DatasetError, match="split file not found; available splits: train, trainval, val"):
        open_dataset(demo_copy, "nosuch")


def test_folder_layout_without_rows_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncat\n")
    (root / "labels.csv").write_text("id,labels\n")
    result = _seeds_cli(root, tmp_path / "run")
    assert result.exit_code == 2 and "labels.csv: no images listed; add rows 'id,class names'" in result.stderr


# ------------------------------------------------------------------------------------ another config
def test_stage_folder_of_another_config_is_refused_unless_overwrite(demo_root, tmp_path):
    run = tmp_path / "run"
    assert _seeds_cli(demo_root, run).exit_code == 0
    stage = run / "seeds" / "threshold"
    before = {p.name: p.read_bytes() for p in (stage / "masks").iterdir()}
    refused = _seeds_cli(demo_root, run, "--blur-sigma", "2.5")
    assert refused.exit_code == 2
    assert f"{stage}: this stage folder was made with another config or input" in refused.stderr
    assert "pass --overwrite to redo it, or use another --run" in refused.stderr
    assert {p.name: p.read_bytes() for p in (stage / "masks").iterdir()} == before  # untouched
    redo = _seeds_cli(demo_root, run, "--blur-sigma", "2.5", "--overwrite")
    assert redo.exit_code == 0 and "12 written, 0 resumed" in redo.output
    assert json.loads((stage / "stage.json").read_text())["config"]["blur_sigma"] == 2.5
    assert {p.name: p.read_bytes() for p in (stage / "masks").iterdir()} != before
    (stage / "masks" / "demo_0000.png").write_bytes(b"stale")
    again = _seeds_cli(demo_root, run, "--blur-sigma", "2.5", "--overwrite")  # same config: still redone
    assert again.exit_code == 0 and "12 written, 0 resumed" in again.output
    assert (stage / "masks" / "demo_0000.png").read_bytes() != b"stale"


def test_folder_without_stage_json_is_refused(demo_root, tmp_path):
    """E.g. a kill during --overwrite's clearing (stage.json goes first) or a foreign folder: never mixed."""
    stage = tmp_path / "run" / "seeds" / "threshold"
    (stage / "masks").mkdir(parents=True)
    (stage / "masks" / "demo_0000.png").write_bytes(b"old output of some other config")
    result = _seeds_cli(demo_root, tmp_path / "run")
    assert result.exit_code == 2 and "holds files but no stage.json" in result.stderr
    assert (stage / "masks" / "demo_0000.png").read_bytes() == b"old output of some other config"
    assert _seeds_cli(demo_root, tmp_path / "run", "--overwrite").exit_code == 0
    assert len(list((stage / "masks").iterdir())) == 12


def test_unfinished_stage_is_not_read_as_a_mask_folder(demo_root, tmp_path):
    stage = tmp_path / "run" / "seeds" / "threshold"
    assert _seeds_cli(demo_root, tmp_path / "run").exit_code == 0
    (stage / "manifest.csv").unlink()  # as after a kill before the manifest was written
    with pytest.raises(StageError, match="has not finished"):
        StageFolder.open(stage)
    result = CliRunner().invoke(main, ["eval", str(stage), "--dataset", str(demo_root)])
    assert result.exit_code == 2 and "re-run the same stage command" in result.stderr


# ------------------------------------------------------------------------------------------- full disk
def test_full_disk_stops_with_a_clear_error_and_keeps_earlier_outputs(demo_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    stage = run / "seeds" / "threshold"
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_until_full(fd):  # stage.json + 5 masks fit, then the disk is full
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    result = _seeds_cli(demo_root, run)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 2
    assert "no space left on the device" in result.stderr
    assert "free some space and re-run the same command: finished outputs are kept" in result.stderr
    assert str(stage / "masks" / "demo_0005.png") in result.stderr  # names the file it could not write
    kept = sorted(p.name for p in (stage / "masks").iterdir())
    assert kept == [f"demo_{k:04d}.png" for k in range(5)]
    assert not list(stage.rglob("*.tmp")) and not list(stage.rglob(".*"))
    early = {name: (stage / "masks" / name).read_bytes() for name in kept}
    # space freed: the same command resumes and completes, earlier outputs intact and identical to a clean run
    resumed = _seeds_cli(demo_root, run)
    assert resumed.exit_code == 0 and "7 written, 5 resumed, 0 failed" in resumed.output
    clean = tmp_path / "clean"
    assert _seeds_cli(demo_root, clean).exit_code == 0
    for png in (clean / "seeds" / "threshold" / "masks").iterdir():
        assert (stage / "masks" / png.name).read_bytes() == png.read_bytes()
    for name, data in early.items():
        assert (stage / "masks" / name).read_bytes() == data


def test_full_disk_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    from wsss import io as wio

    target = tmp_path / "stage.json"
    wio.write_json(target, {"old": True})

    class FullFile:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullFile(real_fdopen(*a, **k)))
    with pytest.raises(DiskFullError, match=f"{target}: no space left on the device"):
        wio.write_json(target, {"new": True})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]


# ------------------------------------------------------------------------------------------ safe loading
class _Payload:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_tampered_npz_gives_a_clear_error_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "executed"
    good = tmp_path / "good.npz"
    write_scores(good, np.ones((2, 4, 5), np.float32), [0, 3])
    scores, ids = read_scores(good)
    assert scores.shape == (2, 4, 5) and ids.tolist() == [0, 3]
    bad = tmp_path / "bad.npz"
    np.savez(bad, scores=np.array([_Payload(sentinel)], dtype=object), class_ids=np.array([0]))
    with pytest.raises(UnsafeFileError, match=f"{bad}: not a plain numeric .npz.*delete it and re-run"):
        read_scores(bad)
    assert not sentinel.exists()
    pickled = tmp_path / "pickled.npz"  # a raw pickle renamed .npz
    pickled.write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(UnsafeFileError, match="pickled.npz"):
        read_scores(pickled)
    assert not sentinel.exists()
    with np.load(bad, allow_pickle=True) as data:  # control: the payload is live when pickles are allowed
        data["scores"]
    assert sentinel.exists()


def test_tampered_npz_in_a_stage_folder_fails_that_image_only(demo_root, tmp_path):
    stage = tmp_path / "stage"
    (stage / "scores").mkdir(parents=True)
    write_scores(stage / "scores" / "a.npz", np.zeros((1, 2, 2)), [0])
    np.savez(stage / "scores" / "b.npz", scores=np.array([_Payload(tmp_path / "x")], dtype=object),
             class_ids=np.array([0]))
    (stage / "manifest.csv").write_text("image_id,mask,scores,status,error,seconds\n"
                                        "a,masks/a.png,scores/a.npz,ok,,0\nb,masks/b.png,scores/b.npz,ok,,0\n")
    folder = StageFolder.open(stage)
    assert folder.scores("a")[1].tolist() == [0]
    with pytest.raises(UnsafeFileError, match="b.npz"):
        folder.scores("b")
    assert not (tmp_path / "x").exists()


def test_tampered_checkpoint_gives_a_clear_error_and_runs_nothing(tmp_path):
    import torch

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.arange(6.0)}, "epoch": 3, "name": "x"}, good)
    state = load_checkpoint(good)
    assert state["epoch"] == 3 and state["model"]["w"].tolist() == [0, 1, 2, 3, 4, 5]
    sentinel = tmp_path / "executed"
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "hook": _Payload(sentinel)}, bad)
    with pytest.raises(UnsafeFileError, match=f"{bad}: refused to load.*could run code"):
        load_checkpoint(bad)
    assert not sentinel.exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UnsafeFileError, match="truncated.pt: not a readable torch checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(UnsafeFileError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.load(bad, weights_only=False)  # control: the payload is live when unpickled unsafely
    assert sentinel.exists()


def test_yaml_with_python_tags_is_refused(tmp_path):
    sentinel = tmp_path / "executed"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"seeds: !!python/object/apply:os.system ['touch {sentinel}']\n")
    with pytest.raises(ConfigError, match="recipe.yaml: not valid YAML"):
        load_yaml(recipe)
    assert not sentinel.exists()
    (tmp_path / "ok.yaml").write_text("seeds:\n  method: threshold\n")
    assert load_yaml(tmp_path / "ok.yaml") == {"seeds": {"method": "threshold"}}


def test_no_unsafe_loader_in_the_package():
    """Every torch.load goes through wsss.io.load_checkpoint (weights_only=True); np.load never allows pickles;
    YAML only through safe_load; no pickle.load at all."""
    import re

    pkg = Path(__file__).resolve().parents[1] / "wsss"
    offenders = []
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path}: {m.group(0)}")
        for m in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in m.group(1):
                offenders.append(f"{path}: {m.group(0)}")
        for pattern in (r"yaml\.load\(", r"yaml\.unsafe_load", r"pickle\.loads?\(", r"yaml\.full_load"):
            offenders += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


# ------------------------------------------------------------------------------------------ flat memory
def test_runner_keeps_only_small_records_per_image(demo_root, tmp_path, monkeypatch):
    """Streaming: each finished image leaves a record of a few short fields; confusion matrices are summed."""
    from wsss.stages import runner

    seen = []
    real_finish = runner._finish

    def spy(stage_dir, dataset, records, cm_sum, seconds, extra_info):
        seen.extend(records)
        return real_finish(stage_dir, dataset, records, cm_sum, seconds, extra_info)

    monkeypatch.setattr(runner, "_finish", spy)
    summary = runner.run_method_stage("seeds", "threshold", runner_spec(), ThresholdConfig(),
                                      open_dataset(demo_root), tmp_path / "run")
    assert summary.ok and summary.quality["images"] == 12 and len(seen) == 12
    for record in seen:
        assert all(isinstance(v, (str, int, float, bool)) for v in record.values()), record
        assert sys.getsizeof(record) + sum(sys.getsizeof(v) for v in record.values()) < 2000


def runner_spec():
    from wsss.stages.seeds import SEED_METHODS

    return SEED_METHODS["threshold"]


def test_scores_npz_is_a_plain_zip_of_numeric_arrays(tmp_path):
    path = tmp_path / "s.npz"
    write_scores(path, np.random.default_rng(0).random((3, 5, 6)), [0, 2, 4])
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["class_ids.npy", "scores.npy"]
    with np.load(path, allow_pickle=False) as data:
        assert data["scores"].dtype == np.float16 and data["class_ids"].dtype == np.int32


# ------------------------------------------------------------------------------------- worker death, odd modes
class _DieOn:
    """A job whose worker process dies (as if OOM-killed) on one image."""

    needs_image = True

    def __init__(self, image_id):
        self.image_id = image_id

    def __call__(self, sample, upstream):
        from wsss.stages.runner import ImageResult

        if sample.id == self.image_id:
            os._exit(9)
        return ImageResult(np.zeros(sample.image.shape[:2], np.uint8))


def test_a_dead_worker_process_is_a_clear_error_and_finished_images_are_kept(demo_root, tmp_path):
    from wsss.stages.runner import prepare_stage_dir, run_images

    ds = open_dataset(demo_root)
    stage = tmp_path / "stage"
    prepare_stage_dir(stage, stage="seeds", method="x", config=ThresholdConfig(), dataset=ds)
    with pytest.raises(StageError, match="a worker process died .*re-run the same command, with fewer --workers"):
        run_images(stage, dataset=ds, job=_DieOn("demo_0011"), workers=2)
    masks = [p for p in (stage / "masks").iterdir() if not p.name.startswith(".")]  # hidden: killed writes
    assert masks and "demo_0011.png" not in {p.name for p in masks}
    for path in masks:
        with Image.open(path) as im:
            im.load()  # whole files only
    prepare_stage_dir(stage, stage="seeds", method="x", config=ThresholdConfig(), dataset=ds)  # the re-run
    assert not [p for p in stage.rglob(".*")]


def test_32bit_and_float_images_are_converted_as_documented(tmp_path):
    from wsss.io import read_image

    wide = np.array([[0, 65535], [32768, 1000]], np.int32)
    Image.fromarray(wide, "I").save(tmp_path / "wide.tif")
    got = read_image(tmp_path / "wide.tif")
    assert got.shape == (2, 2, 3) and got[..., 0].tolist() == [[0, 255], [127, 3]]
    small = np.array([[0.0, 100.0], [255.0, 300.0]], np.float32)  # 300 > 255: scaled as 16-bit
    Image.fromarray(small, "F").save(tmp_path / "small.tif")
    assert read_image(tmp_path / "small.tif")[..., 1].tolist() == [[0, 0], [0, 1]]
    eight = np.array([[0, 7], [128, 255]], np.int32)
    Image.fromarray(eight, "I").save(tmp_path / "eight.tif")
    assert read_image(tmp_path / "eight.tif")[..., 2].tolist() == [[0, 7], [128, 255]]
    la = Image.fromarray(np.array([[10, 200]], np.uint8), "L").convert("LA")
    la.save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[[10, 10, 10], [200, 200, 200]]]


def test_label_guide_survives_tampered_upstream_scores(voc_corpus, tmp_path):
    """wsss label reads the upstream scores/: a pickled, a truncated and a missing npz and a failed upstream row
    fail only their image, each named; nothing runs; the rest equals a run on the intact upstream."""
    clean = voc_corpus["clean"]
    intact, damaged, sentinel = _grabcut_upstream_with_damaged_scores(clean, tmp_path)
    (damaged / "scores" / "demo_0008.npz").unlink()
    expected = {
        "demo_0004": ["damaged/scores/demo_0004.npz", "not a plain numeric .npz", "delete it and re-run"],
        "demo_0005": ["damaged/scores/demo_0005.npz", "delete it and re-run"],
        "demo_0006": [f"{damaged}: no output for image 'demo_0006'", "re-run that stage"],
        "demo_0008": ["damaged/scores/demo_0008.npz", "re-run the upstream stage"],
    }
    args = ["label", "--guide", "cam", "--dataset", str(clean), "--seeds"]
    result = CliRunner().invoke(main, [*args, str(damaged), "--run", str(tmp_path / "run")])
    ref = CliRunner().invoke(main, [*args, str(intact), "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    assert result.exit_code == 1 and f"{len(expected)} image(s) failed" in result.stderr, result.output
    assert not sentinel.exists()
    stage, ref_stage = tmp_path / "run" / "labels" / "cam", tmp_path / "ref" / "labels" / "cam"
    rows = read_csv(stage / "manifest.csv")
    failed = {r["image_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == set(expected)
    for image_id, needles in expected.items():
        assert all(n in failed[image_id] for n in needles), (image_id, failed[image_id])
    ok = [r["image_id"] for r in rows if r["status"] == "ok"]
    assert len(ok) == N_IMAGES - len(expected)
    for image_id in ok:
        assert (stage / "masks" / f"{image_id}.png").read_bytes() == \
            (ref_stage / "masks" / f"{image_id}.png").read_bytes()


# ---------------------------------------------------------------------- tampered files through the CLI
def test_cli_refuses_a_tampered_checkpoint_for_predict_and_train_resume(demo_root, tmp_path):
    import torch

    sentinel = tmp_path / "executed"
    run = tmp_path / "run"
    train = ["train", "--model", "segnet_basic", "--labels", "gt", "--dataset", str(demo_root), "--split", "train",
             "--run", str(run), "--iterations", "1", "--batch-size", "2", "--crop-size", "32", "--loader-workers",
             "0", "--device", "cpu"]
    first = CliRunner().invoke(main, train)
    assert first.exit_code == 0, first.output
    ckpt = run / "train" / "segnet_basic" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["meta"]["hook"] = _Payload(sentinel)  # a pickled object that would run code when unpickled
    torch.save(state, ckpt)
    pred = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), "--dataset", str(demo_root), "--run",
                                     str(tmp_path / "p"), "--device", "cpu"])
    assert pred.exit_code == 2 and str(ckpt) in pred.stderr and "checkpoint" in pred.stderr, pred.output
    resumed = CliRunner().invoke(main, train)  # the same command again reads the checkpoint to resume
    assert resumed.exit_code == 2 and str(ckpt) in resumed.stderr, resumed.output
    assert not sentinel.exists()
    with pytest.raises(UnsafeFileError, match="could run code"):
        load_checkpoint(ckpt)


def test_cli_refuses_a_recipe_with_python_tags(demo_root, tmp_path):
    sentinel = tmp_path / "executed"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: evil\nsteps: !!python/object/apply:os.system ['touch {sentinel}']\n")
    result = CliRunner().invoke(main, ["run", str(recipe), "--dataset", str(demo_root), "--run", str(tmp_path / "r")])
    assert result.exit_code == 2 and "evil.yaml" in result.stderr, result.output
    assert not sentinel.exists()


def test_full_disk_with_worker_processes_stops_the_pool(demo_root, tmp_path, monkeypatch):
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_until_full(fd):  # per process (workers are forked with this patch): 3 writes fit, then full
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    result = _seeds_cli(demo_root, tmp_path / "run", "--workers", "2")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 2 and "no space left on the device" in result.stderr, result.output
    stage = tmp_path / "run" / "seeds" / "threshold"
    assert len(list((stage / "masks").iterdir())) < 12
    resumed = _seeds_cli(demo_root, tmp_path / "run", "--workers", "2")
    assert resumed.exit_code == 0 and "0 failed" in resumed.output
    assert len(list((stage / "masks").iterdir())) == 12 and not list(stage.rglob(".*"))
