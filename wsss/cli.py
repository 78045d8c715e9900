"""The ``wsss`` command line. Parses options, builds a config, calls a stage runner; no algorithm code here.

Method options are generated from the config dataclasses (``fg_threshold`` -> ``--fg-threshold``), so the CLI, the
YAML recipes and ``stage.json`` share one set of names and defaults.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import typing
from pathlib import Path

import click

from . import __version__
from .config import build_config, flat_fields
from .errors import WsssError

log = logging.getLogger("wsss")


# ------------------------------------------------------------------------------------ option generation
def _click_type(hint):
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        hint = next(a for a in args if a is not type(None))
    if hint in (int, float, str):
        return hint
    return str  # tuples: comma-separated, converted by build_config


def method_options(registry: dict):
    """Decorator adding one option per config field over all methods of ``registry`` (shared names merge)."""
    fields: dict[str, tuple] = {}
    merged_choices: dict[str, tuple | None] = {}
    for method, spec in registry.items():
        for name, f, hint, default in flat_fields(spec.config_cls):  # a nested config's keys come flat
            entry = fields.setdefault(name, (f, hint, []))
            entry[2].append(f"{method}={default!r}" if default is not None else method)
            # shared names: the union of the methods' choices (build_config checks the chosen method's own)
            own = f.metadata.get("choices")
            merged_choices[name] = (None if own is None or merged_choices.get(name, ()) is None
                                    else tuple(dict.fromkeys((*merged_choices.get(name, ()), *own))))

    def decorate(fn):
        for name, (f, hint, methods) in sorted(fields.items(), reverse=True):
            flag = "--" + name.replace("_", "-")
            help_text = f"{f.metadata.get('help', '')} [{', '.join(methods)}]"
            if hint is bool:
                opt = click.Option([f"{flag}/--no-{flag[2:]}", ], default=None, help=help_text)
            else:
                choices = merged_choices.get(name)
                ctype = click.Choice(list(choices)) if choices else _click_type(hint)
                opt = click.Option([flag], type=ctype, default=None, help=help_text)
            fn.__click_params__ = getattr(fn, "__click_params__", []) + [opt]
        return fn

    return decorate


def pick_config(registry: dict, method: str, options: dict):
    """The chosen method's config from the options the user gave; an option of another method is an error."""
    spec = registry[method]
    own = {name for name, *_ in flat_fields(spec.config_cls)}
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(k for k in given if k not in own)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise click.UsageError(f"{flags} does not apply to --method {method}")
    return build_config(spec.config_cls, given, where=f"--method {method}")


def common_stage_options(fn):
    for opt in reversed([
        click.option("--dataset", "dataset_path", required=True, type=click.Path(file_okay=False),
                     help="dataset folder (VOC, folder or CamVid layout; detected)"),
        click.option("--split", default=None, help="split name (VOC default: trainval; folder default: all ids)"),
        click.option("--run", "run_dir", default="runs/default", show_default=True, type=click.Path(file_okay=False),
                     help="run folder; the stage writes RUN/<stage>/<method>/"),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
                     help="processes over images"),
        click.option("--overwrite/--no-overwrite", default=False, help="redo the stage folder from scratch"),
        click.option("--overlays", default=0, show_default=True, type=click.IntRange(0),
                     help="write colour overlays for the first N images into overlays/"),
    ]):
        fn = opt(fn)
    return fn


# ------------------------------------------------------------------------------------------ reporting
def quality_row(name: str, summary_or_scores: dict) -> str:
    q = summary_or_scores or {}

    def fmt(x):
        return "     -  " if x is None else f"{x:8.2f}"

    return (f"{name:<28} {fmt(q.get('miou'))}  {fmt(q.get('labelled_miou'))}  {fmt(q.get('coverage'))}  "
            f"{fmt(q.get('mean_precision'))}  {fmt(q.get('mean_recall'))}")


QUALITY_HEADER = f"{'stage':<28} {'mIoU':>8}  {'labelled':>8}  {'cover%':>8}  {'prec':>8}  {'recall':>8}"


def finish_stage(summary) -> None:
    """Print the stage's summary; exit 1 when any image failed."""
    click.echo(f"{summary.stage_dir}: {summary.done} written, {summary.skipped} resumed, "
               f"{len(summary.failed)} failed, {summary.seconds:.1f}s")
    if summary.quality:
        click.echo(QUALITY_HEADER)
        click.echo(quality_row(f"{summary.stage_dir.parent.name}/{summary.stage_dir.name}", summary.quality))
    if summary.failed:
        click.echo(f"{len(summary.failed)} image(s) failed (all listed in manifest.csv and stage.json):", err=True)
        for image_id, why in summary.failed[:10]:
            click.echo(f"  {image_id}: {why}", err=True)
        if len(summary.failed) > 10:
            click.echo(f"  ... and {len(summary.failed) - 10} more", err=True)
        sys.exit(1)


_FILE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _error_line(message: str) -> None:
    """Print ``error: message`` on a line of its own (a progress bar still drawn is ended first)."""
    from .progress import close_bars

    close_bars()
    click.echo(f"error: {message}", err=True)


class WsssGroup(click.Group):
    """Turns wsss errors (and an output folder that cannot be written) into one clear line and exit code 2 instead
    of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WsssError as exc:
            _error_line(str(exc))
            ctx.exit(2)
        except OSError as exc:
            if exc.errno not in _FILE_ERRNOS:
                raise
            from .io import output_error

            _error_line(str(output_error(exc.filename or "the output folder", exc)))
            ctx.exit(2)


def _set_max_pixels(ctx, param, value):
    if value is not None:
        from .files import MAX_PIXELS_ENV

        os.environ[MAX_PIXELS_ENV] = str(value)  # read by every image/mask read, in worker processes too
    return value


@click.group(cls=WsssGroup)
@click.version_option(__version__, prog_name="wsss")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
@click.option("--max-pixels", type=click.IntRange(1), default=None, expose_value=False, callback=_set_max_pixels,
              is_eager=True, help="refuse images and masks larger than this many pixels (width x height) before "
                                  "decoding them [default: $WSSS_MAX_PIXELS or 50000000]")
def main(verbose: int) -> None:
    """wsss: from image tags and boxes to pixel masks and a trained segmentation network.

    Stages write inspectable folders RUN/<stage>/<method>/ (stage.json, manifest.csv, masks/, scores/).
    Progress: a bar in a terminal; elsewhere (a log file, CI) a line every $WSSS_PROGRESS_SECONDS seconds (10).
    """
    from .files import max_pixels

    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("wsss.progress").setLevel(min(logging.INFO, max(level, logging.DEBUG)))
    max_pixels()  # a bad $WSSS_MAX_PIXELS is one error now, not one per image


def _open(dataset_path, split):
    from .datasets import open_dataset

    return open_dataset(dataset_path, split)


# ---------------------------------------------------------------------------------------------- seeds
from .stages.seeds import SEED_METHODS  # noqa: E402  (registry is light: no torch import)


@main.command()
@click.option("--method", required=True, type=click.Choice(list(SEED_METHODS)),
              help="; ".join(f"{k}: {v.summary}" for k, v in SEED_METHODS.items()))
@common_stage_options
@method_options(SEED_METHODS)
def seeds(method, dataset_path, split, run_dir, workers, overwrite, overlays, **options):
    """Make seed masks with a seed method into RUN/seeds/METHOD/."""
    from .stages.runner import run_method_stage

    config = pick_config(SEED_METHODS, method, options)
    dataset = _open(dataset_path, split)
    summary = run_method_stage("seeds", method, SEED_METHODS[method], config, dataset, Path(run_dir),
                               workers=workers, overwrite=overwrite, overlays=overlays)
    finish_stage(summary)


# --------------------------------------------------------------------------------------------- refine
from .stages.refine import REFINERS  # noqa: E402  (registry is light: pydensecrf loads per image)


@main.command()
@click.option("--crf", "method", flag_value="crf", default=None,
              help=f"crf: {REFINERS['crf'].summary} -> RUN/refined/crf/")
@click.option("--affinity", "method", flag_value="affinity",
              help=f"affinity: {REFINERS['affinity'].summary} -> RUN/refined/affinity/")
@click.option("--affinitynet", "method", flag_value="affinitynet",
              help=f"affinitynet: {REFINERS['affinitynet'].summary} -> RUN/refined/affinitynet/")
@click.option("--input", "input_stage", required=True, type=click.Path(file_okay=False),
              help="stage folder to refine (any: RUN/seeds/grabcut, RUN/labels/..., a folder of mask PNGs)")
@common_stage_options
@method_options(REFINERS)
def refine(method, input_stage, dataset_path, split, run_dir, workers, overwrite, overlays, **options):
    """Refine the masks of an input stage folder into RUN/refined/REFINER/ (--crf, or --affinity for CAMs).

    --split defaults to the input stage's split (from its stage.json).
    """
    from .folders import upstream_split
    from .stages.refine import run_refine

    if method is None:
        raise click.UsageError(f"choose a refiner: {', '.join('--' + k for k in REFINERS)}")
    config = pick_config(REFINERS, method, options)
    dataset = _open(dataset_path, split or upstream_split(input_stage))
    summary = run_refine(method, config, dataset, Path(run_dir), input_path=input_stage, workers=workers,
                         overwrite=overwrite, overlays=overlays)
    finish_stage(summary)


# ----------------------------------------------------------------------------------------- candidates
from .stages.candidates import CANDIDATE_METHODS  # noqa: E402  (registry is light: no torch import)


@main.command()
@click.option("--method", default="selective", show_default=True, type=click.Choice(list(CANDIDATE_METHODS)),
              help="; ".join(f"{k}: {v.summary}" for k, v in CANDIDATE_METHODS.items()))
@common_stage_options
@method_options(CANDIDATE_METHODS)
def candidates(method, dataset_path, split, run_dir, workers, overwrite, overlays, **options):
    """Candidate masks per image (for box supervision) into RUN/candidates/METHOD/.

    Writes candidates/<id>.npz (superpixel maps + merge membership), masks/ = the best box-matching candidate of
    each box (BoxSup's initial labels, evaluable) and sheets/ showing each box's best candidates.
    """
    from .stages.candidates import run_candidates

    config = pick_config(CANDIDATE_METHODS, method, options)
    summary = run_candidates(method, config, _open(dataset_path, split), Path(run_dir), workers=workers,
                             overwrite=overwrite, overlays=overlays)
    finish_stage(summary)


# ---------------------------------------------------------------------------------------------- label
from .stages.label import LABEL_GUIDES  # noqa: E402  (registry is light: no torch import)


@main.command()
@click.option("--guide", required=True, type=click.Choice(list(LABEL_GUIDES)),
              help="; ".join(f"{k}: {v.summary}" for k, v in LABEL_GUIDES.items()))
@click.option("--seeds", "seeds_stage", default=None, type=click.Path(file_okay=False),
              help="seed stage folder giving class identity (e.g. RUN/seeds/cam; its scores/ when kept)")
@click.option("--saliency", "saliency_stage", default=None, type=click.Path(file_okay=False),
              help="saliency stage folder giving object extent (RUN/seeds/saliency)")
@click.option("--checkpoint", "checkpoint_stage", default=None, type=click.Path(),
              help="selftrain: the network trained on the box labels (RUN/train/deeplabv2 or its checkpoint.pt)")
@click.option("--reference", "reference_stage", default=None, type=click.Path(file_okay=False),
              help="selftrain: labels whose labelled (non-255) pixels the network must agree with "
                   "(e.g. RUN/seeds/grabcut)")
@common_stage_options
@method_options(LABEL_GUIDES)
def label(guide, seeds_stage, saliency_stage, checkpoint_stage, reference_stage, dataset_path, split, run_dir,
          workers, overwrite, overlays, **options):
    """Fuse seed stages into pseudo masks with a label guide into RUN/labels/GUIDE/.

    --split defaults to the split of the --seeds stage (else --saliency's, from its stage.json).
    """
    from .folders import upstream_split
    from .stages.label import run_label_stage

    config = pick_config(LABEL_GUIDES, guide, options)
    dataset = _open(dataset_path, split or upstream_split(seeds_stage) or upstream_split(saliency_stage))
    summary = run_label_stage(guide, config, dataset, Path(run_dir),
                              upstream_paths={"seeds": seeds_stage, "saliency": saliency_stage,
                                              "checkpoint": checkpoint_stage, "reference": reference_stage},
                              workers=workers, overwrite=overwrite, overlays=overlays)
    finish_stage(summary)


# ----------------------------------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("masks", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", "dataset_path", required=True, type=click.Path(file_okay=False),
              help="dataset folder with GT masks")
@click.option("--split", default=None, help="split to score (default: the layout's whole set)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of tables")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="reader threads")
@click.option("--sweep", default=None, is_flag=False, flag_value="0.0:0.7:0.05", metavar="START:STOP:STEP",
              help="score the dense label map of the folder's scores/ (e.g. seeds/cam) at each background threshold "
                   "(STOP included, or a list a,b,c; bare --sweep: 0.0:0.7:0.05) and report the best")
def eval_(masks, dataset_path, split, as_json, workers, sweep):
    """Score MASKS (a stage folder or a folder of PNG masks) against GT.

    mIoU counts 255 ("no label") as a miss for the GT class; labelled mIoU leaves such pixels out and is shown
    beside coverage (share of pixels labelled). GT 255 is ignored.
    """
    from .stages.evaluate import evaluate_folder

    if sweep is not None:
        _eval_sweep(masks, _open(dataset_path, split), sweep, as_json, workers)
        return
    result = evaluate_folder(masks, _open(dataset_path, split), workers=workers)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        _eval_failures(result)
        return
    click.echo(f"{result['images']} images scored ({result['missing']} of the split without a mask, "
               f"{len(result['errors'])} unreadable)")
    click.echo(f"mIoU {result['miou']:.2f}   labelled mIoU {result['labelled_miou']:.2f}   "
               f"coverage {result['coverage']:.2f}%   pixel acc. {result['pixel_accuracy']:.2f}")
    click.echo(f"{'class':<16} {'IoU':>7} {'lab.IoU':>7} {'prec':>7} {'recall':>7}")
    for name, row in result["per_class"].items():
        vals = [row[k] for k in ("iou", "labelled_iou", "precision", "recall")]
        click.echo(f"{name:<16} " + " ".join("    -  " if v is None else f"{v:7.2f}" for v in vals))
    _eval_failures(result)


def _eval_failures(result: dict) -> None:
    """Name the images ``wsss eval`` could not read (prediction or GT) on stderr and exit 1 when there are any; the
    scores above leave them out."""
    errors = result.get("errors") or []
    if not errors:
        return
    click.echo(f"{len(errors)} image(s) could not be scored (left out of the scores above):", err=True)
    for row in errors[:10]:
        click.echo(f"  {row['image_id']}: {row['reason']}", err=True)
    if len(errors) > 10:
        click.echo(f"  ... and {len(errors) - 10} more (all listed under 'errors' with --json)", err=True)
    sys.exit(1)


def _eval_sweep(masks, dataset, spec, as_json, workers):
    """``wsss eval --sweep``: mIoU per background threshold of a scores folder."""
    from .seeds.cam import threshold_range
    from .stages.evaluate import sweep_folder

    try:
        thresholds = threshold_range(spec)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; use START:STOP:STEP or a,b,c", param_hint="--sweep") from None
    result = sweep_folder(masks, dataset, thresholds, workers=workers)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        _eval_failures(result)
        return
    click.echo(f"{result['images']} images scored ({result['missing']} of the split without scores, "
               f"{len(result['errors'])} unreadable)")
    click.echo(f"{'bg_threshold':>12} {'mIoU':>7} {'prec':>7} {'recall':>7}")
    for row in result["rows"]:
        mark = "  <- best" if row is result["best"] else ""
        vals = [row[k] for k in ("miou", "mean_precision", "mean_recall")]
        click.echo(f"{row['bg_threshold']:12.3f} " + " ".join("    -  " if v is None else f"{v:7.2f}" for v in vals)
                   + mark)
    click.echo(f"best: mIoU {result['best']['miou']:.2f} at --bg-threshold {result['best']['bg_threshold']:g}")
    _eval_failures(result)


# ----------------------------------------------------------------------------------------------- data
@main.command("make-demo-data")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--images", default=60, show_default=True, type=click.IntRange(2), help="number of images")
@click.option("--size", default="128x160", show_default=True, help="HEIGHTxWIDTH of each image")
@click.option("--seed", default=0, show_default=True, help="random seed (same seed, same files)")
def make_demo_data_cmd(directory, images, size, seed):
    """Generate the synthetic demo dataset (VOC layout, tags, boxes, GT masks) in DIRECTORY."""
    from .datasets import make_demo_data

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use HEIGHTxWIDTH, e.g. 128x160", param_hint="--size") from None
    root = make_demo_data(directory, images, size=(h, w), seed=seed)
    click.echo(f"wrote {images} images to {root}")


@main.command()
@click.option("--run", "run_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="run folder (the generated dataset goes to RUN/data)")
@click.option("--images", default=60, show_default=True, type=click.IntRange(4), help="demo set size")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--overwrite/--no-overwrite", default=False, help="redo every stage")
def demo(run_dir, images, workers, overwrite):
    """Generate the demo dataset, run the demo recipe (pipelines/demo.yaml: every stage) on it, print the quality
    table and write RUN/report.html. Re-running resumes what is finished."""
    from .stages.pipeline import run_demo_recipe

    results, report = run_demo_recipe(Path(run_dir), images=images, workers=workers, overwrite=overwrite,
                                      echo=click.echo)
    click.echo("")
    click.echo(QUALITY_HEADER)
    for result in results:
        click.echo(quality_row(result.label, result.quality))
    click.echo(f"report: {report}")


# ------------------------------------------------------------------------------------------- recipes
@main.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--dataset", "dataset_path", required=True, type=click.Path(file_okay=False),
              help="dataset folder (recipes hold no paths; the dataset is always given here)")
@click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False),
              help="run folder [default: runs/<recipe name>]")
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE",
              help="override a step's config key (or its split / workers); repeatable")
@click.option("--workers", default=None, type=click.IntRange(1, 256),
              help="processes over images for the steps without their own 'workers' [default: the recipe's]")
@click.option("--overwrite/--no-overwrite", default=False, help="redo every stage from scratch")
@click.option("--redo", multiple=True, metavar="STEP",
              help="redo this step from scratch (and the steps reading it); repeatable")
@click.option("--skip", multiple=True, metavar="STEP", help="leave this step out of this run; repeatable")
@click.option("--report/--no-report", "make_report", default=True, help="write RUN/report.html at the end")
def run_cmd(recipe, dataset_path, run_dir, overrides, workers, overwrite, redo, skip, make_report):
    """Run the steps of a YAML RECIPE (a file, or the name of a shipped one: demo, voc_guided, ...).

    Finished stages are skipped (their images show as resumed), an interrupted stage resumes, and one quality table
    for all stages is printed at the end.
    """
    from .recipes import apply_overrides, load_recipe
    from .stages.pipeline import run_recipe

    parsed = apply_overrides(load_recipe(recipe), overrides)
    results = run_recipe(parsed, dataset_path, run_dir, workers=workers, overwrite=overwrite, redo=redo, skip=skip,
                         echo=click.echo)
    click.echo("")
    click.echo(QUALITY_HEADER)
    for result in results:
        click.echo(quality_row(f"{result.name} ({result.status})", result.quality))
    if make_report and results:
        from .report import write_report

        click.echo(f"report: {write_report(Path(run_dir) if run_dir else Path('runs') / parsed.name)}")


@main.command("report")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option("--samples", default=8, show_default=True, type=click.IntRange(0, 200),
              help="images shown in the sample grid")
def report_cmd(run_dir, samples):
    """Write RUN/report.html (pictures in RUN/report/): quality table, per-class IoU chart, sample grid."""
    from .report import write_report

    click.echo(str(write_report(Path(run_dir), samples=samples)))


# ----------------------------------------------------------------------------------- train / predict
class RegistryChoice(click.Choice):
    """``click.Choice`` over a registry's keys, read when first needed, so ``wsss --help`` does not import torch."""

    def __init__(self, load_keys, case_sensitive: bool = True):
        self._load_keys = load_keys
        self.case_sensitive = case_sensitive

    @property
    def choices(self):
        return tuple(self._load_keys())


def _model_names():
    from .models import MODELS

    return sorted(MODELS)


def _config_options(config_cls):
    from types import SimpleNamespace

    return method_options({config_cls.__name__.replace("Config", "").lower(): SimpleNamespace(config_cls=config_cls)})


from .config import PredictConfig, TrainConfig  # noqa: E402


@main.command()
@click.option("--model", "model_name", required=True, type=RegistryChoice(_model_names),
              help="model of the registry (wsss.models.MODELS), e.g. deeplabv2")
@click.option("--labels", required=True,
              help="masks to train on: a stage folder (a path, or STAGE/METHOD under --run, e.g. labels/guide) "
                   "or 'gt' for the dataset's GT masks")
@click.option("--dataset", "dataset_path", required=True, type=click.Path(file_okay=False),
              help="dataset folder (VOC, folder or CamVid layout; detected)")
@click.option("--split", default="train", show_default=True, help="split to train on")
@click.option("--val-split", default=None, help="split with GT to report mIoU on (e.g. val) [default: none]")
@click.option("--run", "run_dir", default="runs/default", show_default=True, type=click.Path(file_okay=False),
              help="run folder; training writes RUN/train/MODEL/")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1")
@click.option("--stop-at", default=None, type=click.IntRange(1),
              help="stop after this iteration (checkpointed); the same command later continues the schedule")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch CPU threads [default: torch's]")
@click.option("--overwrite/--no-overwrite", default=False, help="start again from scratch")
@_config_options(TrainConfig)
def train(model_name, labels, dataset_path, split, val_split, run_dir, device, stop_at, threads, overwrite,
          **options):
    """Train a segmentation model on a mask stage folder (pseudo masks, seeds or GT) into RUN/train/MODEL/.

    Every pair is checked before training (image decodes, mask has its size and values in 0..K-1/255, mask
    present); bad pairs are left out, listed in stage.json and named on stderr, training runs on the rest and the
    command exits 1. No usable pair at all: exit 2 before training.

    Re-running the same command resumes from checkpoint.pt with the same schedule. Several processes:
    torchrun --nproc-per-node N -m wsss -- train ... (DDP; gloo on CPU, nccl on GPU; the "--" stops torchrun from
    reading --run as its own --run-path).
    """
    from .stages.train import run_train

    if threads:
        import torch

        torch.set_num_threads(threads)
    config = build_config(TrainConfig, {k: v for k, v in options.items() if v is not None}, where="wsss train")
    dataset = _open(dataset_path, split)
    val = _open(dataset_path, val_split) if val_split else None
    s = run_train(model_name, config, dataset, Path(run_dir), labels=labels, val_dataset=val, device=device,
                  stop_at=stop_at, overwrite=overwrite)
    from .runtime import dist_env

    if dist_env()[0] != 0:
        return
    state = ("stopped (re-run to continue)" if s.stopped_early
             else "complete (--max-minutes spent)" if s.budget_spent else "complete")
    ips = f"{s.images_per_second:.2f} img/s" if s.images_per_second else "-"
    click.echo(f"{s.stage_dir}: {state} at iteration {s.iterations} (from {s.start_iteration}), "
               f"{s.seconds:.1f}s, {ips}; checkpoint {s.checkpoint}")
    if s.validation:
        click.echo(f"val mIoU {s.validation['miou']:.2f}  pixel acc. {s.validation['pixel_accuracy']:.2f}  "
                   f"({s.validation['images']} images of split {val_split})")
    if s.failed:  # bad pairs were left out and training ran on the rest: say so and exit 1, as finish_stage does
        click.echo(f"{len(s.failed)} training pair(s) left out (all listed in {s.stage_dir / 'stage.json'}):",
                   err=True)
        for image_id, why in s.failed[:10]:
            click.echo(f"  {image_id}: {why}", err=True)
        if len(s.failed) > 10:
            click.echo(f"  ... and {len(s.failed) - 10} more", err=True)
        sys.exit(1)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="checkpoint.pt of 'wsss train' (or its RUN/train/MODEL folder)")
@common_stage_options
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda")
@_config_options(PredictConfig)
def predict(checkpoint, dataset_path, split, run_dir, workers, overwrite, overlays, device, **options):
    """Predict masks (+ scores/) with a trained model into RUN/predictions/MODEL/ (multi-scale + flip optional)."""
    from .stages.predict import run_predict

    config = build_config(PredictConfig, {k: v for k, v in options.items() if v is not None}, where="wsss predict")
    summary = run_predict(checkpoint, config, _open(dataset_path, split), Path(run_dir), device=device,
                          workers=workers, overwrite=overwrite, overlays=overlays)
    finish_stage(summary)
