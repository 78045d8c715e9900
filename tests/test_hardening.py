"""Issue 18: hardening from a bad-input probe. One test per class of input: the umask of outputs, decompression
bombs in images and masks, paths that are not regular files, text files in the encodings people produce, an
unwritable run folder, unreadable files in ``wsss eval``, a tampered manifest, the checkpoint refusal's reason and
progress output outside a terminal. Each asserts the exit code, the file named in the message, that the other
images were processed, and that no traceback was printed.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsss.cli import main
from wsss.datasets import make_demo_data, open_dataset
from wsss.errors import DatasetError, ImageError, UnsafeFileError
from wsss.io import read_csv, read_image, read_mask

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"demo_{k:04d}" for k in range(12)]  # conftest's demo_root


def _seeds(dataset: Path, run: Path, *extra: str, args: tuple[str, ...] = ()):
    return CliRunner().invoke(main, [*args, "seeds", "--method", "threshold", "--dataset", str(dataset),
                                     "--run", str(run), *extra])


def _no_traceback(result) -> None:
    text = result.output + (result.stderr if hasattr(result, "stderr") else "")
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def _manifest(stage: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in read_csv(stage / "manifest.csv")}


def _png_bomb(path: Path, width: int, height: int) -> None:
    """A small grayscale PNG whose header says ``width`` x ``height`` (a decompression bomb: a few kB that would
    decode to width * height bytes). Only the first rows are stored; a guarded reader never gets that far."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (width + 1) * 8, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------------ umask
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_honour_the_umask(demo_root, tmp_path, umask):
    from wsss.io import save_checkpoint, write_bytes

    old = os.umask(umask)
    try:
        result = _seeds(demo_root, tmp_path / "run")
        data = make_demo_data(tmp_path / "demo", 2, size=(48, 48))
        write_bytes(tmp_path / "report.html", b"<html></html>")
        save_checkpoint(tmp_path / "ckpt.pt", {"w": np.zeros(2).tolist()})
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    _no_traceback(result)
    stage = tmp_path / "run" / "seeds" / "threshold"
    files = [stage / "stage.json", stage / "manifest.csv", *sorted((stage / "masks").iterdir()),
             data / "JPEGImages" / "demo_0000.jpg", data / "classes.txt", tmp_path / "report.html",
             tmp_path / "ckpt.pt"]
    assert len(files) == 6 + len(IDS)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, (path, oct(path.stat().st_mode))
    for folder in (stage, stage / "masks", data / "JPEGImages"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder


# ------------------------------------------------------------------------------------ decompression bombs
def test_bomb_image_and_bomb_gt_mask_fail_those_images_only(demo_copy, tmp_path):
    image = demo_copy / "JPEGImages" / "demo_0002.jpg"
    image.unlink()
    _png_bomb(image.with_suffix(".png"), 10_000, 8_000)  # 80 MP: above the 50 MP default, below PIL's warning
    gt = demo_copy / "SegmentationClass" / "demo_0005.png"
    _png_bomb(gt, 20_000, 20_000)  # 400 MP: above PIL's own error limit too
    result = _seeds(demo_copy, tmp_path / "run")
    assert result.exit_code == 1
    _no_traceback(result)
    rows = _manifest(tmp_path / "run" / "seeds" / "threshold")
    assert rows["demo_0002"]["status"] == "failed" and rows["demo_0005"]["status"] == "failed"
    assert "JPEGImages/demo_0002.png: image is 10000x8000 = 80,000,000 pixels, above the limit of 50,000,000 pixels" \
        in rows["demo_0002"]["error"]
    assert "WSSS_MAX_PIXELS" in rows["demo_0002"]["error"]
    assert "SegmentationClass/demo_0005.png: mask is" in rows["demo_0005"]["error"]
    assert "above the limit" in rows["demo_0005"]["error"]
    assert sorted(i for i, r in rows.items() if r["status"] == "ok") == sorted(set(IDS) - {"demo_0002",
                                                                                           "demo_0005"})
    info = json.loads((tmp_path / "run" / "seeds" / "threshold" / "stage.json").read_text())
    assert info["status"] == "complete_with_failures" and info["counts"]["failed"] == 2


def test_eval_with_a_bomb_gt_mask_names_it_and_exits_1(demo_root, demo_copy, tmp_path):
    assert _seeds(demo_root, tmp_path / "run").exit_code == 0
    _png_bomb(demo_copy / "SegmentationClass" / "demo_0003.png", 20_000, 20_000)
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "run" / "seeds" / "threshold"), "--dataset",
                                       str(demo_copy)])
    assert result.exit_code == 1
    _no_traceback(result)
    assert f"{len(IDS) - 1} images scored" in result.output  # the others are scored
    assert "1 image(s) could not be scored" in result.stderr
    assert "demo_0003: " in result.stderr and "SegmentationClass/demo_0003.png: mask is" in result.stderr


def test_training_pairs_leave_out_a_bomb_mask(demo_copy):
    pytest.importorskip("torch")
    from wsss.pairs import MaskPairs

    _png_bomb(demo_copy / "SegmentationClass" / "demo_0004.png", 20_000, 20_000)
    pairs = MaskPairs(open_dataset(demo_copy, "trainval"), None, crop_size=16, progress=False)
    assert "demo_0004" not in pairs.ids and len(pairs.ids) == len(IDS) - 1
    (image_id, why), = pairs.failures
    assert image_id == "demo_0004" and "SegmentationClass/demo_0004.png: mask is" in why


def test_pixel_limit_is_configurable(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_MAX_PIXELS", "50000000")  # restored after the test (--max-pixels sets it)
    result = _seeds(demo_root, tmp_path / "small", args=("--max-pixels", "1000"))
    assert result.exit_code == 1
    _no_traceback(result)
    rows = _manifest(tmp_path / "small" / "seeds" / "threshold")
    assert all(r["status"] == "failed" for r in rows.values()) and len(rows) == len(IDS)
    assert "demo_0000.jpg: image is 80x64 = 5,120 pixels, above the limit of 1,000 pixels" in \
        rows["demo_0000"]["error"]
    monkeypatch.setenv("WSSS_MAX_PIXELS", "lots")
    result = _seeds(demo_root, tmp_path / "bad")
    assert result.exit_code == 2 and "WSSS_MAX_PIXELS='lots': give the pixel limit as a positive whole number" \
        in result.stderr
    assert not (tmp_path / "bad").exists()
    monkeypatch.setenv("WSSS_MAX_PIXELS", "5120")  # read at each call: 80 x 64 = 5120 is at the limit
    assert read_image(demo_root / "JPEGImages" / "demo_0000.jpg").shape == (64, 80, 3)
    monkeypatch.setenv("WSSS_MAX_PIXELS", "5119")
    with pytest.raises(ImageError, match="above the limit"):
        read_mask(demo_root / "SegmentationClass" / "demo_0000.png")


# ------------------------------------------------------------------------------------ not a regular file
def _run_cli(*args: str, timeout: int = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsss", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_fifo_and_device_inputs_are_refused_at_once(demo_copy, tmp_path):
    image = demo_copy / "JPEGImages" / "demo_0001.jpg"
    image.unlink()
    os.mkfifo(image)  # no writer: an unguarded open() blocks forever
    gt = demo_copy / "SegmentationClass" / "demo_0006.png"
    gt.unlink()
    os.symlink("/dev/zero", gt)  # endless bytes
    proc = _run_cli("seeds", "--method", "threshold", "--dataset", str(demo_copy), "--run", str(tmp_path / "run"),
                    timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{image}: is a FIFO (named pipe), not a regular file" in proc.stderr
    assert f"{gt}: is a character device, not a regular file" in proc.stderr
    rows = _manifest(tmp_path / "run" / "seeds" / "threshold")
    assert sum(r["status"] == "ok" for r in rows.values()) == len(IDS) - 2
    split = demo_copy / "ImageSets" / "Segmentation" / "fifo.txt"
    os.mkfifo(split)
    proc = _run_cli("seeds", "--method", "threshold", "--dataset", str(demo_copy), "--split", "fifo", "--run",
                    str(tmp_path / "run2"), timeout=60)
    assert proc.returncode == 2 and f"{split}: is a FIFO (named pipe), not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------- text inputs
def _folder_dataset(demo_root: Path, root: Path, n: int = 6) -> tuple[Path, list[str], dict]:
    """A folder-layout copy of the first ``n`` demo images: images/, masks/, classes.txt, labels.csv."""
    ds = open_dataset(demo_root)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = ds.ids[:n]
    samples = {}
    for image_id in ids:
        s = ds.load(image_id)
        samples[image_id] = s
        shutil.copy(ds.image_path(image_id), root / "images" / f"{image_id}.jpg")
        Image.fromarray(s.gt, "L").save(root / "masks" / f"{image_id}.png")
    shutil.copy(demo_root / "classes.txt", root / "classes.txt")
    return root, ids, samples


def _labels_lines(ids, samples, names) -> list[str]:
    return [f"{i},{' '.join(names[c] for c in samples[i].image_labels)}" for i in ids]


def test_bom_and_crlf_text_files_are_read_and_ids_with_spaces_refused(demo_root, tmp_path):
    root, ids, samples = _folder_dataset(demo_root, tmp_path / "data")
    names = open_dataset(demo_root).classes
    bom = "\ufeff"
    (root / "classes.txt").write_bytes((bom + "\r\n".join(names) + "\r\n").encode())
    (root / "labels.csv").write_bytes((bom + "\r\n".join(["id,labels", *_labels_lines(ids, samples, names),
                                                           "demo 0009,disc"]) + "\r\n").encode())
    (root / "splits").mkdir()
    (root / "splits" / "part.txt").write_bytes((bom + "\r\n".join([*ids[:4], "demo 0009", ""])).encode())
    (root / "boxes.csv").write_bytes((bom + "id,class,x0,y0,x1,y1\r\n").encode())
    ds = open_dataset(root)
    assert ds.classes == tuple(names) and ds.ids == ids  # no '\ufeffid' image, no dropped first image
    result = _seeds(root, tmp_path / "run", "--split", "part")
    assert result.exit_code == 1
    _no_traceback(result)
    rows = _manifest(tmp_path / "run" / "seeds" / "threshold")
    assert sorted(i for i, r in rows.items() if r["status"] == "ok") == ids[:4]
    assert "demo" not in rows  # never cut at the space
    why = rows["demo 0009"]["error"]
    assert "splits/part.txt line 5" in why and "holds a space" in why and "'demo_0009'" in why
    result = _seeds(root, tmp_path / "all", "--split", "all")
    rows = _manifest(tmp_path / "all" / "seeds" / "threshold")
    assert result.exit_code == 1 and sorted(i for i, r in rows.items() if r["status"] == "ok") == ids
    assert "labels.csv line" in rows["demo 0009"]["error"] and "holds a space" in rows["demo 0009"]["error"]


@pytest.mark.parametrize("name", ["labels.csv", "classes.txt", "boxes.csv", "split"])
def test_a_file_that_is_not_utf8_is_one_error_naming_the_line(demo_root, tmp_path, name):
    root, ids, samples = _folder_dataset(demo_root, tmp_path / "data", n=3)
    names = open_dataset(demo_root).classes
    (root / "labels.csv").write_text("\n".join(["id,labels", *_labels_lines(ids, samples, names)]) + "\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(ids) + "\n")
    target = root / {"split": "splits/train.txt"}.get(name, name)
    text = target.read_text() if target.exists() else "id,class,x0,y0,x1,y1\n"
    target.write_bytes(text.encode() + "# caf\u00e9 (Latin-1)\n".encode("latin-1"))
    lineno = text.count("\n") + 1
    result = _seeds(root, tmp_path / "run", "--split", "train")
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert f"{target}: line {lineno}, column 6: not UTF-8 text (byte 0xe9); save the file as UTF-8" in result.stderr
    assert result.stderr.count("error:") == 1
    assert not (tmp_path / "run" / "seeds" / "threshold" / "manifest.csv").exists()


def test_bad_box_rows_name_the_file_line_and_field(demo_root, tmp_path):
    root, ids, samples = _folder_dataset(demo_root, tmp_path / "data", n=7)
    names = open_dataset(demo_root).classes
    (root / "labels.csv").write_text("\n".join(["id,labels", *_labels_lines(ids, samples, names)]) + "\n")
    bad = {ids[1]: (f"{ids[1]},disc,nan,1,10,10", "field x0 = 'nan' is not a finite pixel number"),
           ids[2]: (f"{ids[2]},disc,1,inf,10,10", "field y0 = 'inf' is not a finite pixel number"),
           ids[3]: (f"{ids[3]},disc,1,1,ten,10", "field x1 = 'ten' is not a finite pixel number"),
           ids[4]: (f"{ids[4]},disc,1,1,10", "has 5 fields, but it needs id,class,x0,y0,x1,y1 numbers"),
           ids[5]: (f"{ids[5]},disc,1,1,10,1e999", "field y1 = '1e999' is not a finite pixel number")}
    lines = ["id,class,x0,y0,x1,y1", f"{ids[0]},disc,1,1,10,10", *(row for row, _ in bad.values())]
    (root / "boxes.csv").write_text("\r\n".join(lines) + "\r\n")
    result = _seeds(root, tmp_path / "run")
    assert result.exit_code == 1
    _no_traceback(result)
    rows = _manifest(tmp_path / "run" / "seeds" / "threshold")
    for lineno, (image_id, (_, needle)) in enumerate(bad.items(), 3):
        why = rows[image_id]["error"]
        assert f"boxes.csv: line {lineno}: " in why and needle in why, why
        assert "internal error" not in why
    assert {i for i, r in rows.items() if r["status"] == "ok"} == {ids[0], ids[6]}


def test_folder_layout_without_splits_suggests_split_all(demo_root, tmp_path):
    root, ids, samples = _folder_dataset(demo_root, tmp_path / "data", n=2)
    (root / "labels.csv").write_text("\n".join(_labels_lines(ids, samples, open_dataset(demo_root).classes)))
    with pytest.raises(DatasetError, match=r"split file not found; available splits: none; this folder layout has "
                                           r"no splits/ folder: use --split all"):
        open_dataset(root, "train")


# ------------------------------------------------------------------------------------ unwritable run folder
def test_unwritable_run_folder_is_one_clear_error(demo_root, tmp_path, monkeypatch):
    run = tmp_path / "readonly" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # a read-only mount (works as root too, where chmod would not stop us)
        if str(self).startswith(str(tmp_path / "readonly")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = _seeds(demo_root, run)
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert "Read-only file system" in result.stderr and "readonly" in result.stderr
    assert "give a --run folder you can write to" in result.stderr


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_run_folder_without_write_permission(demo_root, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = _seeds(demo_root, locked / "run")
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 2 and "Permission denied" in result.stderr and str(locked) in result.stderr
    _no_traceback(result)


def test_unwritable_stage_folder_mid_run_stops_the_stage(demo_root, tmp_path, monkeypatch):
    import tempfile as tempfile_module

    real = tempfile_module.mkstemp
    calls = {"n": 0}

    def mkstemp(*args, **kwargs):  # stage.json and 3 masks, then the folder turns read-only
        calls["n"] += 1
        if calls["n"] > 4:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile_module, "mkstemp", mkstemp)
    result = _seeds(demo_root, tmp_path / "run")
    assert result.exit_code == 2
    _no_traceback(result)
    assert "masks: cannot write here (Permission denied)" in result.stderr
    assert len(list((tmp_path / "run" / "seeds" / "threshold" / "masks").iterdir())) == 3  # finished ones kept


# ----------------------------------------------------------------------------------------- wsss eval
def test_eval_names_unreadable_predictions_and_exits_1(demo_root, tmp_path):
    stage = tmp_path / "run" / "seeds" / "threshold"
    assert _seeds(demo_root, tmp_path / "run").exit_code == 0
    (stage / "masks" / "demo_0007.png").write_bytes(b"\x89PNG junk")
    result = CliRunner().invoke(main, ["eval", str(stage), "--dataset", str(demo_root)])
    assert result.exit_code == 1
    _no_traceback(result)
    assert f"{len(IDS) - 1} images scored" in result.output and "1 unreadable" in result.output
    assert f"demo_0007: {stage / 'masks' / 'demo_0007.png'}: cannot decode mask" in result.stderr
    result = CliRunner().invoke(main, ["eval", str(stage), "--dataset", str(demo_root), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["images"] == len(IDS) - 1 and [e["image_id"] for e in data["errors"]] == ["demo_0007"]


def test_tampered_manifest_path_outside_the_stage_is_refused(demo_root, tmp_path):
    from wsss.folders import StageFolder

    stage = tmp_path / "run" / "seeds" / "threshold"
    assert _seeds(demo_root, tmp_path / "run").exit_code == 0
    outside = tmp_path / "outside.png"
    shutil.copy(stage / "masks" / "demo_0001.png", outside)  # a valid mask: trusting the path would read it
    text = (stage / "manifest.csv").read_text()
    text = text.replace("masks/demo_0002.png", "../../../outside.png").replace("masks/demo_0003.png", str(outside))
    (stage / "manifest.csv").write_text(text)
    folder = StageFolder.open(stage)
    with pytest.raises(ImageError, match=r"manifest.csv: line 4: mask path '../../../outside.png' of image "
                                         r"'demo_0002' points outside its stage folder"):
        folder.mask("demo_0002")
    with pytest.raises(ImageError, match="line 5: mask path .*outside.png' of image 'demo_0003' points outside"):
        folder.mask("demo_0003")
    assert folder.mask("demo_0004").shape == (64, 80)
    result = CliRunner().invoke(main, ["eval", str(stage), "--dataset", str(demo_root)])
    assert result.exit_code == 1
    _no_traceback(result)
    assert f"{len(IDS) - 2} images scored" in result.output
    assert "demo_0002: " in result.stderr and "points outside its stage folder" in result.stderr
    refined = CliRunner().invoke(main, ["refine", "--crf", "--input", str(stage), "--dataset", str(demo_root),
                                        "--run", str(tmp_path / "run"), "--workers", "1"])
    assert refined.exit_code == 1
    _no_traceback(refined)
    rows = _manifest(tmp_path / "run" / "refined" / "crf")
    assert rows["demo_0002"]["status"] == "failed" and "points outside" in rows["demo_0002"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == len(IDS) - 2


# ---------------------------------------------------------------------------------------- checkpoints
class _Foreign:
    pass


def test_checkpoint_refusal_keeps_torchs_reason(tmp_path):
    torch = pytest.importorskip("torch")
    from wsss.io import load_checkpoint

    path = tmp_path / "foreign.pt"
    torch.save({"model": {}, "extra": _Foreign()}, path)
    with pytest.raises(UnsafeFileError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refused to load" in message
    assert "_Foreign" in message and "GLOBAL" in message  # which global was refused
    assert "weights_only` set to `False`" not in message and "add_safe_globals" not in message


# ------------------------------------------------------------------------------------------- progress
def test_progress_outside_a_terminal_is_log_lines(monkeypatch, caplog):
    from wsss import progress as progress_module

    monkeypatch.setenv("WSSS_PROGRESS_SECONDS", "0.000001")
    with caplog.at_level(logging.INFO, logger="wsss.progress"):
        bar = progress_module.progress(range(3), desc="seeds/x", unit="img")
        assert list(bar) == [0, 1, 2]
        with progress_module.progress(total=4, desc="train", unit="it", initial=2) as manual:
            manual.update(1)
            manual.set_postfix(loss="0.5")
            manual.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "wsss.progress"]
    assert any(line.startswith("seeds/x: 3/3 img (100%)") and line.endswith("(done)") for line in lines), lines
    assert any(line.startswith("train: 4/4 it (100%)") and "loss=0.5" in line for line in lines), lines
    assert all("\r" not in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wsss.progress"):
        list(progress_module.progress(range(3), desc="quiet", enabled=False))
    assert not caplog.records
    monkeypatch.setattr(progress_module, "_is_terminal", lambda stream: True)
    from tqdm import tqdm

    assert isinstance(progress_module.progress(range(2), desc="tty"), tqdm)


def test_close_bars_ends_the_line_before_an_error():
    from tqdm import tqdm

    from wsss.progress import close_bars

    out = io.StringIO()
    bar = tqdm(total=10, desc="train", file=out)
    bar.update(3)
    close_bars()
    assert out.getvalue().endswith("\n") and not list(tqdm._instances)


def test_cli_log_has_no_carriage_return_frames(demo_root, tmp_path):
    log_file = tmp_path / "log.txt"
    with open(log_file, "w") as fh:  # a log file, as with 'wsss demo > log 2>&1'
        proc = subprocess.run([sys.executable, "-m", "wsss", "seeds", "--method", "threshold", "--dataset",
                               str(demo_root), "--run", str(tmp_path / "run")], stdout=fh, stderr=subprocess.STDOUT,
                              cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    text = log_file.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text
    assert f"INFO wsss.progress: seeds/threshold: {len(IDS)}/{len(IDS)} img (100%)" in text


def test_a_recipe_that_is_a_fifo_or_not_utf8_is_one_error(demo_root, tmp_path):
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    proc = _run_cli("run", str(fifo), "--dataset", str(demo_root), "--run", str(tmp_path / "run"), timeout=60)
    assert proc.returncode == 2 and f"{fifo}: is a FIFO (named pipe), not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: d\u00e9mo\nsteps: []\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["run", str(latin), "--dataset", str(demo_root), "--run", str(tmp_path / "r")])
    assert result.exit_code == 2 and str(latin) in result.output and "line 1" in result.output
    _no_traceback(result)


def test_validation_leaves_out_a_bomb_gt_mask_and_training_completes(demo_copy, tmp_path):
    from wsss.config import TrainConfig
    from wsss.stages.train import run_train

    val = open_dataset(demo_copy, "val")
    bad = val.ids[0]
    _png_bomb(demo_copy / "SegmentationClass" / f"{bad}.png", 20_000, 20_000)
    config = TrainConfig(backbone="resnet18", iterations=2, batch_size=2, crop_size=32, loader_workers=0,
                         checkpoint_every=2)
    s = run_train("deeplabv2", config, open_dataset(demo_copy, "train"), tmp_path, val_dataset=val, progress=False)
    assert not s.stopped_early and s.validation["skipped"] == [bad]
    assert s.validation["images"] == len(val.ids) - 1
    assert read_json_status(tmp_path / "train/deeplabv2/stage.json") == "complete"


def read_json_status(path: Path) -> str:
    return json.loads(path.read_text())["status"]
