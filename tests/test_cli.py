import json

import pytest
from click.testing import CliRunner

from wsss.cli import main


@pytest.fixture
def cli():
    return CliRunner()


def test_help_for_every_command(cli):
    result = cli.invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = list(main.commands)
    assert {"seeds", "eval", "demo", "make-demo-data"} <= set(commands)
    for name in commands:
        sub = cli.invoke(main, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)
        assert "Usage:" in sub.output


def test_seeds_then_eval_json(cli, demo_root, tmp_path):
    run = tmp_path / "run"
    r = cli.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(run),
                          "--blur-sigma", "0.5"])
    assert r.exit_code == 0, r.output
    assert "12 written, 0 resumed, 0 failed" in r.output
    stage = run / "seeds" / "threshold"
    info = json.loads((stage / "stage.json").read_text())
    assert info["config"]["blur_sigma"] == 0.5
    r = cli.invoke(main, ["eval", str(stage), "--dataset", str(demo_root), "--json"])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output)
    assert {"miou", "labelled_miou", "coverage", "per_class"} <= set(scores)
    assert scores["miou"] == info["quality"]["miou"] and scores["images"] == 12
    assert 0 < scores["miou"] < 100 and scores["coverage"] <= 100
    # re-running resumes everything
    r = cli.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(run),
                          "--blur-sigma", "0.5"])
    assert "0 written, 12 resumed" in r.output


def test_eval_table_output_on_a_plain_png_folder(cli, demo_root):
    r = cli.invoke(main, ["eval", str(demo_root / "SegmentationClass"), "--dataset", str(demo_root)])
    assert r.exit_code == 0, r.output
    assert "mIoU 100.00" in r.output and "coverage 100.00%" in r.output


def test_option_of_another_method_is_a_usage_error(cli, demo_root, tmp_path):
    r = cli.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run",
                          str(tmp_path), "--polarity", "sideways"])
    assert r.exit_code == 2 and "Invalid value for '--polarity'" in r.output


def test_pick_config_refuses_options_of_another_method():
    import click
    from dataclasses import dataclass

    from wsss.cli import pick_config
    from wsss.config import ThresholdConfig, option
    from wsss.stages.runner import MethodSpec

    @dataclass(frozen=True)
    class Other:
        iterations: int = option(5, "iterations")

    registry = {"threshold": MethodSpec(ThresholdConfig, None, ""), "other": MethodSpec(Other, None, "")}
    with pytest.raises(click.UsageError, match="--iterations does not apply to --method threshold"):
        pick_config(registry, "threshold", {"iterations": 3, "blur_sigma": None})
    assert pick_config(registry, "other", {"iterations": "3", "blur_sigma": None}) == Other(3)
    assert pick_config(registry, "threshold", {"iterations": None, "blur_sigma": 2}) == ThresholdConfig(blur_sigma=2.0)


def test_errors_exit_with_a_clear_line(cli, tmp_path, demo_copy):
    r = cli.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(tmp_path / "missing"), "--run",
                          str(tmp_path / "r")])
    assert r.exit_code == 2 and "error:" in r.output and "dataset folder not found" in r.output
    (demo_copy / "JPEGImages/demo_0001.jpg").write_bytes(b"junk")
    r = cli.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_copy), "--run", str(tmp_path / "r")])
    assert r.exit_code == 1
    assert "11 written" in r.output and "demo_0001" in r.output and "cannot decode" in r.output


def test_make_demo_data_and_demo(cli, tmp_path):
    r = cli.invoke(main, ["make-demo-data", str(tmp_path / "d"), "--images", "5", "--size", "48x64"])
    assert r.exit_code == 0 and (tmp_path / "d/JPEGImages/demo_0004.jpg").exists()
    r = cli.invoke(main, ["make-demo-data", str(tmp_path / "e"), "--size", "48-64"])
    assert r.exit_code == 2 and "HEIGHTxWIDTH" in r.output
