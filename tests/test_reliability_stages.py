"""Issue 10, the stages beyond the threshold/box/grabcut seeds: the damaged VOC corpus of tests/test_reliability.py
through CAM seeds, saliency seeds, candidates and predict; full disk during training; empty split and unreadable
masks for the other commands.

Each damaged case must fail alone (its error naming the file and the fix, in manifest.csv and stage.json, exit 1),
and every other image must come out byte-identical to a run on the reference dataset (the clean set with the odd
images already converted). The stages that train first (CAM, saliency) leave the unloadable images out of training:
their networks must equal those trained on a split listing only the loadable images.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from test_reliability import DUPLICATE, VOC_BAD_IDS, VOC_FAILURES, voc_corpus  # noqa: F401  (fixture)
from wsss.cli import main
from wsss.io import load_checkpoint, read_csv

# images the trainers cannot load (image or annotation broken); demo_0007/0008 only have bad GT, which training
# does not read but the per-image pass (scored against GT) does
UNTRAINABLE = {"demo_0000", "demo_0001", "demo_0002", "demo_0009", "demo_0010", "demo_0011", "demo_0013"}
TRAINABLE = [f"demo_{k:04d}" for k in range(20) if f"demo_{k:04d}" not in UNTRAINABLE]


def _reference_with_split(voc_corpus, tmp_path: Path, name: str, ids: list[str]) -> Path:  # noqa: F811
    ref = tmp_path / "reference"
    shutil.copytree(voc_corpus["reference"], ref)
    (ref / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return ref


def _check_failures(stage: Path, result) -> list[str]:
    """The corpus's failures, each named with its file and fix; returns the ids that came out ok."""
    assert result.exit_code == 1, result.output
    cases = {**{k: v[1] for k, v in VOC_FAILURES.items()}, **VOC_BAD_IDS}
    assert f"{len(cases) + 1} image(s) failed" in result.stderr
    rows = read_csv(stage / "manifest.csv")
    failed = {r["image_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == set(cases) | {DUPLICATE}
    for image_id, needles in cases.items():
        assert all(n in failed[image_id] for n in needles), (image_id, failed[image_id])
    info = json.loads((stage / "stage.json").read_text())
    assert info["status"] == "complete_with_failures" and len(info["failures"]) == len(cases) + 1
    ok = sorted(r["image_id"] for r in rows if r["status"] == "ok")
    assert ok == sorted(set(f"demo_{k:04d}" for k in range(20)) - set(VOC_FAILURES))
    return ok


def _same_outputs(stage: Path, ref: Path, ids: list[str], subs: tuple[str, ...]) -> None:
    for image_id in ids:
        for sub in subs:
            ext = ".npz" if sub in ("scores", "candidates") else ".png"
            assert (stage / sub / f"{image_id}{ext}").read_bytes() == (ref / sub / f"{image_id}{ext}").read_bytes(), \
                (sub, image_id)


def _skipped(stage: Path) -> dict[str, str]:
    return {r["image_id"]: r["reason"] for r in read_csv(stage / "train_skipped.csv")}


CAM = ["--backbone", "resnet18", "--epochs", "2", "--batch-size", "4", "--crop-size", "32", "--resize-long", "40,64",
       "--lr", "0.001", "--optimizer", "adamw", "--scales", "1.0"]


@pytest.mark.slow
def test_voc_corpus_through_cam_seeds(voc_corpus, tmp_path):  # noqa: F811
    """Used to stop in classifier training at the first unreadable image (exit 2, nothing written)."""
    run = ["seeds", "--method", "cam", *CAM, "--dataset"]
    result = CliRunner().invoke(main, [*run, str(voc_corpus["root"]), "--run", str(tmp_path / "run")])
    stage = tmp_path / "run" / "seeds" / "cam"
    ok = _check_failures(stage, result)
    skipped = _skipped(stage)
    assert set(skipped) == UNTRAINABLE
    assert "JPEGImages/demo_0001.jpg" in skipped["demo_0001"] and "truncated" in skipped["demo_0001"]
    ref_data = _reference_with_split(voc_corpus, tmp_path, "trainable", TRAINABLE)
    ref = CliRunner().invoke(main, [*run, str(ref_data), "--split", "trainable", "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    ref_stage = tmp_path / "ref" / "seeds" / "cam"
    assert read_csv(ref_stage / "train_skipped.csv") == []
    a, b = (load_checkpoint(s / "classifier.pt")["model"] for s in (stage, ref_stage))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _same_outputs(stage, ref_stage, ok, ("masks", "scores"))


SALIENCY = ["--input-size", "32", "--epochs", "2", "--batch-size", "4", "--grabcut-iterations", "2"]


@pytest.mark.slow
def test_voc_corpus_through_saliency_seeds(voc_corpus, tmp_path):  # noqa: F811
    run = ["seeds", "--method", "saliency", *SALIENCY, "--dataset"]
    result = CliRunner().invoke(main, [*run, str(voc_corpus["root"]), "--run", str(tmp_path / "run")])
    stage = tmp_path / "run" / "seeds" / "saliency"
    ok = _check_failures(stage, result)
    assert set(_skipped(stage)) == UNTRAINABLE
    ref_data = _reference_with_split(voc_corpus, tmp_path, "trainable", TRAINABLE)
    ref = CliRunner().invoke(main, [*run, str(ref_data), "--split", "trainable", "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    ref_stage = tmp_path / "ref" / "seeds" / "saliency"
    a, b = (load_checkpoint(s / "saliency.pt")["model"] for s in (stage, ref_stage))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _same_outputs(stage, ref_stage, ok, ("masks", "scores", "saliency"))


@pytest.fixture(scope="module")
def tiny_checkpoint(voc_corpus, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("model")
    result = CliRunner().invoke(main, ["train", "--model", "segnet_basic", "--labels", "gt", "--dataset",
                                       str(voc_corpus["clean"]), "--run", str(run), "--iterations", "1",
                                       "--batch-size", "2", "--crop-size", "32", "--loader-workers", "0",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run / "train" / "segnet_basic" / "checkpoint.pt"


@pytest.fixture(scope="module")
def grabcut_seeds(voc_corpus, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """GrabCut seeds made on the corpus (its failed rows included) and on the reference dataset: the upstream of
    the refine and label runs."""
    out = {}
    for name in ("root", "reference"):
        run = tmp_path_factory.mktemp(f"grabcut_{name}")
        result = CliRunner().invoke(main, ["seeds", "--method", "grabcut", "--dataset", str(voc_corpus[name]),
                                           "--run", str(run)])
        assert result.exit_code == (1 if name == "root" else 0), result.output
        out[name] = run / "seeds" / "grabcut"
    return out


@pytest.mark.parametrize("command", ["candidates", "predict", "refine", "label"])
def test_voc_corpus_through_candidates_predict_refine_label(voc_corpus, tiny_checkpoint, grabcut_seeds,  # noqa: F811
                                                            tmp_path, command):
    """Refine and label read the image's upstream row too: a failed upstream row fails the image with the
    upstream's own error (which names the file and the fix) quoted."""
    def args(upstream):
        return {"candidates": ["candidates"],
                "predict": ["predict", "--checkpoint", str(tiny_checkpoint), "--device", "cpu"],
                "refine": ["refine", "--crf", "--input", str(upstream)],
                "label": ["label", "--guide", "cam", "--seeds", str(upstream)]}[command]
    folder = {"candidates": "candidates/selective", "predict": "predictions/segnet_basic", "refine": "refined/crf",
              "label": "labels/cam"}[command]
    sandbox = tmp_path / "sandbox"
    shutil.copytree(voc_corpus["root"], sandbox / "data")
    before = {p for p in sandbox.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, [*args(grabcut_seeds["root"]), "--dataset", str(sandbox / "data"), "--run",
                                       str(sandbox / "run")])
    stage = sandbox / "run" / folder
    ok = _check_failures(stage, result)
    ref = CliRunner().invoke(main, [*args(grabcut_seeds["reference"]), "--dataset", str(voc_corpus["reference"]),
                                    "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    subs = {"candidates": ("masks", "candidates"), "predict": ("masks", "scores")}.get(command, ("masks",))
    _same_outputs(stage, tmp_path / "ref" / folder, ok, subs)
    new = {p for p in sandbox.rglob("*") if p.is_file()} - before
    assert [p for p in new if stage not in p.parents] == []  # nothing written outside the stage folder


# ------------------------------------------------------------------------------------------ full disk, training
TRAIN = ["train", "--model", "segnet_basic", "--labels", "gt", "--split", "train", "--iterations", "4",
         "--batch-size", "2", "--crop-size", "32", "--loader-workers", "0", "--device", "cpu", "--checkpoint-every",
         "1", "--threads", "1"]


def test_full_disk_during_training_keeps_the_last_checkpoint_and_resumes_exactly(demo_root, tmp_path, monkeypatch):
    real_fsync, writes = os.fsync, []

    def fsync_full_at_third_checkpoint(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".checkpoint.pt."):
            writes.append(name)
            if len(writes) >= 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    run = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", fsync_full_at_third_checkpoint)
    full = CliRunner().invoke(main, [*TRAIN, "--dataset", str(demo_root), "--run", str(run)])
    monkeypatch.setattr(os, "fsync", real_fsync)
    stage = run / "train" / "segnet_basic"
    assert full.exit_code == 2, full.output
    assert f"{stage / 'checkpoint.pt'}: no space left on the device" in full.stderr
    assert "free some space and re-run the same command" in full.stderr
    assert load_checkpoint(stage / "checkpoint.pt")["iteration"] == 2  # the last whole checkpoint
    assert not [p for p in stage.rglob(".*")], "temporary files left behind"
    resumed = CliRunner().invoke(main, [*TRAIN, "--dataset", str(demo_root), "--run", str(run)])
    assert resumed.exit_code == 0 and "(from 2)" in resumed.output, resumed.output
    clean = CliRunner().invoke(main, [*TRAIN, "--dataset", str(demo_root), "--run", str(tmp_path / "clean")])
    assert clean.exit_code == 0
    a = load_checkpoint(stage / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "clean" / "train" / "segnet_basic" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ empty split, other commands
@pytest.mark.parametrize("command", [
    ["candidates"],
    ["train", "--model", "segnet_basic", "--labels", "gt", "--iterations", "1", "--device", "cpu"],
    ["label", "--guide", "boxes", "--boxsup-rounds", "0"],
])
def test_empty_split_is_a_clear_error_for_every_command(demo_copy, tmp_path, command):
    (demo_copy / "ImageSets/Segmentation/val.txt").write_text("# nothing\n\n")
    result = CliRunner().invoke(main, [*command, "--dataset", str(demo_copy), "--split", "val", "--run",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "ImageSets/Segmentation/val.txt: split file is empty; list one image id a line" in result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- eval
def test_eval_names_unreadable_and_misfit_masks_and_scores_the_rest(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.stages.evaluate import evaluate_folder

    assert CliRunner().invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run",
                                     str(tmp_path / "up")]).exit_code == 0
    stage = tmp_path / "up" / "seeds" / "threshold"
    intact = evaluate_folder(stage, open_dataset(demo_root))
    (stage / "masks" / "demo_0001.png").write_bytes(b"garbage")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(stage / "masks" / "demo_0002.png")
    with Image.open(stage / "masks" / "demo_0003.png") as im:
        bad = np.asarray(im).copy()
    bad[0, 0] = 99
    Image.fromarray(bad, "L").save(stage / "masks" / "demo_0003.png")
    result = evaluate_folder(stage, open_dataset(demo_root))
    reasons = {e["image_id"]: e["reason"] for e in result["errors"]}
    assert set(reasons) == {"demo_0001", "demo_0002", "demo_0003"}
    assert "masks/demo_0001.png: cannot decode mask" in reasons["demo_0001"]
    assert "masks/demo_0002.png" in reasons["demo_0002"] and "8x8" in reasons["demo_0002"]
    assert "masks/demo_0003.png: mask values [99]" in reasons["demo_0003"]
    assert result["images"] == intact["images"] - 3
    cli = CliRunner().invoke(main, ["eval", str(stage), "--dataset", str(demo_root)])
    assert cli.exit_code == 1 and "3 unreadable" in cli.output  # issue 18: eval names them and exits 1
    assert "3 image(s) could not be scored" in cli.stderr and "demo_0001: " in cli.stderr


def test_voc_corpus_through_train(voc_corpus, tmp_path):  # noqa: F811
    """wsss train --labels gt on the corpus: unloadable images and bad GT are left out (annotation problems do not
    matter to training on GT), the odd image modes are converted; the weights equal a run on the reference dataset
    restricted to the usable images."""
    train = ["train", "--model", "segnet_basic", "--labels", "gt", "--iterations", "3", "--batch-size", "2",
             "--crop-size", "32", "--loader-workers", "0", "--device", "cpu", "--threads", "1", "--dataset"]
    result = CliRunner().invoke(main, [*train, str(voc_corpus["root"]), "--split", "trainval", "--run",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    info = json.loads((tmp_path / "run" / "train" / "segnet_basic" / "stage.json").read_text())
    reasons = {f["image_id"]: f["reason"] for f in info["failures"]}
    bad_pairs = {"demo_0000", "demo_0001", "demo_0002", "demo_0007", "demo_0008"}
    assert set(reasons) == bad_pairs | set(VOC_BAD_IDS) | {DUPLICATE}
    for image_id in bad_pairs:
        assert all(n in reasons[image_id] for n in VOC_FAILURES[image_id][1]), (image_id, reasons[image_id])
    usable = [f"demo_{k:04d}" for k in range(20) if f"demo_{k:04d}" not in bad_pairs]
    assert info["training"]["train_images"] == len(usable) == 15
    ref_data = _reference_with_split(voc_corpus, tmp_path, "usable", usable)
    ref = CliRunner().invoke(main, [*train, str(ref_data), "--split", "usable", "--run", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    a, b = (load_checkpoint(r / "train" / "segnet_basic" / "checkpoint.pt")["model"]
            for r in (tmp_path / "run", tmp_path / "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


BOXSUP = ["label", "--guide", "boxes", "--boxsup-rounds", "1", "--model", "deeplabv2", "--backbone", "resnet18",
          "--iterations", "4", "--batch-size", "2", "--crop-size", "32", "--lr", "0.001", "--top-k", "2",
          "--device", "cpu"]


@pytest.mark.slow
def test_voc_corpus_through_the_boxsup_guide(voc_corpus, tmp_path):  # noqa: F811
    """Used to stop the whole guide (exit 2) when any image had no candidates or failed in a round. Now the bad
    images are listed (the round's own error quoted), round 1 trains on the rest, and the other images' labels
    equal a run on the reference dataset restricted to them."""
    sandbox = tmp_path / "sandbox"
    shutil.copytree(voc_corpus["root"], sandbox / "data")
    result = CliRunner().invoke(main, [*BOXSUP, "--dataset", str(sandbox / "data"), "--run", str(sandbox / "run")])
    ok = _check_failures(sandbox / "run" / "labels" / "boxes", result)
    train_info = json.loads((sandbox / "run" / "train" / "boxsup_r1" / "stage.json").read_text())
    assert train_info["counts"]["ok"] == len(ok) == 11
    ref_data = _reference_with_split(voc_corpus, tmp_path, "ok", ok)
    ref = CliRunner().invoke(main, [*BOXSUP, "--dataset", str(ref_data), "--split", "ok", "--run",
                                    str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    for folder in ("labels/boxes_r0", "labels/boxes_r1", "labels/boxes"):
        _same_outputs(sandbox / "run" / folder, tmp_path / "ref" / folder, ok, ("masks",))
    a, b = (load_checkpoint(r / "train" / "boxsup_r1" / "checkpoint.pt")["model"] for r in (sandbox / "run",
                                                                                           tmp_path / "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- tampered training checkpoints
class _Payload:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tamper(path: Path, sentinel: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["hook"] = _Payload(sentinel)
    torch.save(state, path)


def test_tampered_cam_and_saliency_checkpoints_are_refused_and_run_nothing(demo_root, tmp_path):
    sentinel = tmp_path / "executed"
    cam = ["seeds", "--method", "cam", *CAM[:3], "1", *CAM[4:], "--dataset", str(demo_root), "--run",
           str(tmp_path / "cam")]
    assert CliRunner().invoke(main, cam).exit_code == 0
    ckpt = tmp_path / "cam" / "seeds" / "cam" / "classifier.pt"
    _tamper(ckpt, sentinel)
    again = CliRunner().invoke(main, cam)  # the same command reads the checkpoint to resume (or reuse) it
    assert again.exit_code == 2 and f"{ckpt}" in again.stderr, \
        again.output
    sal = ["seeds", "--method", "saliency", "--input-size", "32", "--epochs", "2", "--batch-size", "4",
           "--grabcut-iterations", "1", "--dataset", str(demo_root), "--run", str(tmp_path / "sal")]
    assert CliRunner().invoke(main, sal).exit_code == 0
    stage = tmp_path / "sal" / "seeds" / "saliency"
    _tamper(stage / "checkpoint.pt", sentinel)  # as if killed before saliency.pt was written
    (stage / "saliency.pt").unlink()
    resumed = CliRunner().invoke(main, sal)
    assert resumed.exit_code == 2 and f"{stage / 'checkpoint.pt'}" in resumed.stderr, resumed.output
    given = CliRunner().invoke(main, [*sal[:-2], "--run", str(tmp_path / "other"), "--checkpoint",
                                      str(stage / "checkpoint.pt")])
    assert given.exit_code == 2 and "checkpoint.pt" in given.stderr, given.output
    # a finished stage whose saliency.pt was tampered with afterwards: one clear error up front, no image run
    fresh = [*sal[:-2], "--run", str(tmp_path / "sal2")]
    assert CliRunner().invoke(main, fresh).exit_code == 0
    final = tmp_path / "sal2" / "seeds" / "saliency" / "saliency.pt"
    _tamper(final, sentinel)
    rerun = CliRunner().invoke(main, [*fresh, "--overlays", "0"])
    assert rerun.exit_code == 2 and f"{final}" in rerun.stderr, rerun.output
    assert not sentinel.exists()
