"""YAML recipes: a run name and an ordered chain of stage steps (``wsss run RECIPE --dataset PATH``).

A recipe holds nothing machine-local; the dataset path is an argument of ``wsss run``::

    name: voc_guided              # run folder: runs/<name>/ unless --run is given
    split: train                  # default split of every step (optional)
    workers: 2                    # default --workers of every per-image step (optional)
    steps:
      - name: cam                 # step name (default: the method); used by inputs and --set
        stage: seeds              # seeds | label | refine | train | predict
        method: cam               # a key of that stage's registry (= the folder name)
        config: {bg_threshold: 0.3}   # the method's config keys (unknown keys are errors)
      - name: guide
        stage: label
        method: saliency
        inputs: {seeds: cam, saliency: saliency}   # the method's upstream roles -> earlier step names
      - stage: refine
        method: crf
        input: guide              # shorthand when the method reads exactly one upstream stage

Parsing (:func:`parse_recipe`) checks the shape; :func:`resolve_recipe` checks every step against the stage
registries that exist in this installation (a stage that has not landed is a clear error naming the step),
fills each method's config dataclass with :func:`wsss.config.build_config` and links the inputs.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_config, load_yaml
from .errors import ConfigError

STEP_KEYS = ("name", "stage", "method", "config", "input", "inputs", "split", "workers", "val_split")
RECIPE_KEYS = ("name", "description", "split", "workers", "steps", "report")


@dataclass(frozen=True)
class StageKind:
    """Where a stage's registry lives and which folder of the run it writes (``RUN/<folder>/<method>/``).

    ``config`` (``"module:Class"``) is the config class of every method of the stage when the registry holds plain
    builders (train, predict: the method is the model name); ``roles`` are then the upstream roles the stage reads
    (``optional`` ones may be left out: train without ``labels`` trains on the dataset's GT). ``requires`` names
    the module that must exist for the stage to run.
    """

    module: str
    registry: str
    folder: str
    summary: str
    config: str | None = None
    roles: tuple[str, ...] | None = None
    optional: tuple[str, ...] = ()
    requires: str | None = None


STAGES: dict[str, StageKind] = {
    "seeds": StageKind("wsss.stages.seeds", "SEED_METHODS", "seeds", "seed masks from tags / boxes"),
    "candidates": StageKind("wsss.stages.candidates", "CANDIDATE_METHODS", "candidates",
                            "candidate masks per image (selective search; masks/ = each box's best-fitting one)"),
    "label": StageKind("wsss.stages.label", "LABEL_GUIDES", "labels", "pseudo labels fused from seeds"),
    "refine": StageKind("wsss.stages.refine", "REFINERS", "refined", "refinement of a mask stage (dense CRF; random walk of CAMs)"),
    "train": StageKind("wsss.models", "MODELS", "train", "segmentation network trained on a mask stage (or GT)",
                       config="wsss.config:TrainConfig", roles=("labels",), optional=("labels",),
                       requires="wsss.stages.train"),
    "predict": StageKind("wsss.models", "MODELS", "predictions", "masks predicted by a trained model",
                         config="wsss.config:PredictConfig", roles=("checkpoint",), requires="wsss.stages.predict"),
}


def _import(module: str, stage: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ConfigError(f"stage {stage!r} is not available in this wsss ({module} is not installed)") from None
        raise


def stage_registry(stage: str) -> dict:
    """The registry dict of ``stage`` (import on demand); :class:`ConfigError` when it is not available."""
    kind = STAGES.get(stage)
    if kind is None:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if kind.requires:
        _import(kind.requires, stage)
    registry = getattr(_import(kind.module, stage), kind.registry, None)
    if not isinstance(registry, dict):
        raise ConfigError(f"stage {stage!r} is not available in this wsss ({kind.module} has no {kind.registry})")
    return registry


def stage_config_class(stage: str, spec) -> type:
    kind = STAGES[stage]
    if kind.config:
        module, _, name = kind.config.partition(":")
        return getattr(importlib.import_module(module), name)
    return spec.config_cls


def stage_roles(stage: str, spec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(roles, optional roles)`` of a method's upstream inputs."""
    kind = STAGES[stage]
    if kind.roles is not None:
        return kind.roles, kind.optional
    optional = tuple(getattr(spec, "optional_upstream", ()) or ())
    return tuple(getattr(spec, "upstream", ()) or ()) + optional, optional


def available_stages() -> dict[str, list[str]]:
    """``{stage: [methods]}`` for every stage whose registry can be imported."""
    out = {}
    for stage in STAGES:
        try:
            out[stage] = sorted(stage_registry(stage))
        except ConfigError:
            continue
    return out


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Step:
    """One recipe step as written (values not yet checked against the registries)."""

    name: str
    stage: str
    method: str
    config: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    split: str | None = None
    workers: int | None = None
    val_split: str | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]
    split: str | None = None
    workers: int | None = None
    description: str = ""
    report: dict = field(default_factory=dict)
    source: str | None = None


def _where(source, what: str) -> str:
    return f"{source}: {what}" if source else what


def parse_recipe(data: dict, source: str | Path | None = None) -> Recipe:
    """Check a loaded recipe mapping and make a :class:`Recipe`; errors name the file, the step and the key."""
    src = str(source) if source is not None else None
    if not isinstance(data, dict):
        raise ConfigError(_where(src, "a recipe is a mapping with 'name' and 'steps'"))
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(_where(src, f"unknown recipe key(s) {', '.join(map(repr, unknown))}; "
                                      f"valid keys: {', '.join(RECIPE_KEYS)}"))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("."):
        raise ConfigError(_where(src, "'name' must be a plain run name (it becomes runs/<name>/)"))
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(_where(src, "'steps' must be a non-empty list of steps"))
    steps: list[Step] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_steps, 1):
        label = f"step {index}"
        if not isinstance(raw, dict):
            raise ConfigError(_where(src, f"{label}: a step is a mapping with 'stage' and 'method'"))
        if isinstance(raw.get("name"), str):
            label = f"step {index} ({raw['name']!r})"
        unknown = sorted(set(raw) - set(STEP_KEYS))
        if unknown:
            raise ConfigError(_where(src, f"{label}: unknown step key(s) {', '.join(map(repr, unknown))}; "
                                          f"valid keys: {', '.join(STEP_KEYS)} (method options go under 'config')"))
        for key in ("stage", "method"):
            if not isinstance(raw.get(key), str):
                raise ConfigError(_where(src, f"{label}: '{key}' is required (a name)"))
        step_name = raw.get("name", raw["method"])
        if not isinstance(step_name, str) or not step_name or "." in step_name:
            raise ConfigError(_where(src, f"{label}: 'name' must be a name without dots"))
        if step_name in seen:
            raise ConfigError(_where(src, f"{label}: two steps are named {step_name!r}; give each step a unique "
                                          "'name'"))
        seen.add(step_name)
        config = raw.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(_where(src, f"{label}: 'config' must be a mapping of the method's options"))
        if "input" in raw and "inputs" in raw:
            raise ConfigError(_where(src, f"{label}: give 'input' (one upstream step) or 'inputs', not both"))
        inputs: dict[str, Any]
        if "input" in raw:
            if not isinstance(raw["input"], str):
                raise ConfigError(_where(src, f"{label}: 'input' must be the name of an earlier step"))
            inputs = {None: raw["input"]}
        else:
            inputs = raw.get("inputs") or {}
            if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
                raise ConfigError(_where(src, f"{label}: 'inputs' maps the method's upstream roles to earlier "
                                              "step names, e.g. {seeds: cam, saliency: saliency}"))
        for ref in inputs.values():
            if ref not in seen or ref == step_name:
                raise ConfigError(_where(src, f"{label}: input {ref!r} is not an earlier step; earlier steps: "
                                              f"{', '.join(s.name for s in steps) or 'none'}"))
        workers = raw.get("workers", None)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ConfigError(_where(src, f"{label}: 'workers' must be a positive integer"))
        split = raw.get("split", None)
        if split is not None and not isinstance(split, str):
            raise ConfigError(_where(src, f"{label}: 'split' must be a split name"))
        val_split = raw.get("val_split", None)
        if val_split is not None and (not isinstance(val_split, str) or raw["stage"] != "train"):
            raise ConfigError(_where(src, f"{label}: 'val_split' (a split name) is for train steps"))
        steps.append(Step(step_name, raw["stage"], raw["method"], dict(config), dict(inputs), split, workers,
                          val_split))
    workers = data.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(_where(src, "'workers' must be a positive integer"))
    report = data.get("report") or {}
    if not isinstance(report, dict):
        raise ConfigError(_where(src, "'report' must be a mapping (e.g. {samples: 8})"))
    return Recipe(name.strip(), tuple(steps), data.get("split"), workers, str(data.get("description", "")),
                  report, src)


def load_recipe(path: str | Path) -> Recipe:
    """Read and parse a recipe file (``yaml.safe_load``). A bare name finds a shipped recipe in ``pipelines/``."""
    return parse_recipe(load_yaml(find_recipe(path)), find_recipe(path))


def pipelines_dir() -> Path:
    """The shipped recipes: ``pipelines/`` beside the source tree, else ``<prefix>/share/wsss/pipelines``."""
    here = Path(__file__).resolve().parent.parent / "pipelines"
    if (here / "demo.yaml").exists():
        return here
    return Path(sys.prefix) / "share" / "wsss" / "pipelines"


def find_recipe(path: str | Path) -> Path:
    """``path`` if it exists, else a shipped recipe of that name (``demo`` or ``demo.yaml``)."""
    path = Path(path)
    if path.exists():
        return path
    shipped = pipelines_dir() / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.exists():
        return shipped
    have = sorted(p.stem for p in pipelines_dir().glob("*.yaml"))
    raise ConfigError(f"{path}: recipe file not found; shipped recipes: {', '.join(have) or 'none'}")


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """Apply ``--set step.key=value`` overrides (value parsed as YAML: ``3``, ``0.5``, ``null``, ``a,b``).

    ``key`` is a config key of the step's method, or the step's ``split`` / ``val_split`` / ``workers``.
    """
    import yaml

    steps = {s.name: s for s in recipe.steps}
    for item in overrides:
        target, sep, text = item.partition("=")
        step_name, dot, key = target.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--set {item!r}: write STEP.KEY=VALUE, e.g. --set cam.epochs=2")
        if step_name not in steps:
            raise ConfigError(f"--set {item!r}: no step named {step_name!r}; steps: {', '.join(steps)}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        step = steps[step_name]
        if key in ("split", "val_split"):
            step = dataclasses.replace(step, **{key: None if value is None else str(value)})
        elif key == "workers":
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--set {item!r}: workers must be a positive integer")
            step = dataclasses.replace(step, workers=value)
        else:
            step = dataclasses.replace(step, config={**step.config, key: value})
        steps[step_name] = step
    return dataclasses.replace(recipe, steps=tuple(steps[s.name] for s in recipe.steps))


# --------------------------------------------------------------------------------------------- resolving
@dataclass(frozen=True)
class ResolvedStep:
    """A step checked against its registry: its spec, built config and upstream roles -> step names."""

    step: Step
    spec: Any
    config: Any
    inputs: dict[str, str]

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def folder(self) -> str:
        """``<stage folder>/<method>`` relative to the run folder."""
        return f"{STAGES[self.step.stage].folder}/{self.step.method}"


def _resolve_step(step: Step, src: str | None) -> ResolvedStep:
    label = f"step {step.name!r}"
    if step.stage not in STAGES:
        raise ConfigError(_where(src, f"{label}: unknown stage {step.stage!r}; stages: {', '.join(STAGES)}"))
    try:
        registry = stage_registry(step.stage)
    except ConfigError as exc:
        raise ConfigError(_where(src, f"{label}: {exc}")) from None
    if step.method not in registry:
        raise ConfigError(_where(src, f"{label}: stage {step.stage!r} has no method {step.method!r}; "
                                      f"choose one of {', '.join(sorted(registry))}"))
    spec = registry[step.method]
    config = build_config(stage_config_class(step.stage, spec), step.config,
                          where=_where(src, f"{label} ({step.stage} {step.method})"))
    roles, optional = stage_roles(step.stage, spec)
    inputs = dict(step.inputs)
    if None in inputs:
        if len(roles) != 1:
            raise ConfigError(_where(src, f"{label}: {step.stage} {step.method} reads {len(roles)} upstream "
                                          f"stage(s) ({', '.join(roles) or 'none'}); name them under 'inputs'"))
        inputs = {roles[0]: inputs[None]}
    unknown = sorted(set(inputs) - set(roles))
    missing = sorted(set(roles) - set(inputs) - set(optional))
    if unknown:
        raise ConfigError(_where(src, f"{label}: unknown input role(s) {', '.join(map(repr, unknown))}; "
                                      f"{step.stage} {step.method} reads {', '.join(roles) or 'no upstream'}"))
    if missing:
        raise ConfigError(_where(src, f"{label}: missing input(s) {', '.join(map(repr, missing))}; map them to "
                                      "earlier steps under 'inputs'"))
    return ResolvedStep(step, spec, config, inputs)


def check_recipe(recipe: Recipe) -> list[tuple[str, str]]:
    """Every problem of every step (``[(step name, message)]``), instead of stopping at the first."""
    problems = []
    folders: dict[str, str] = {}
    for step in recipe.steps:
        try:
            resolved = _resolve_step(step, recipe.source)
        except ConfigError as exc:
            problems.append((step.name, str(exc)))
            continue
        if resolved.folder in folders:
            problems.append((step.name, _where(recipe.source, f"step {step.name!r}: writes RUN/{resolved.folder}/ "
                                                              f"like step {folders[resolved.folder]!r}; one method "
                                                              "runs once per run (use another recipe or --run for a "
                                                              "variant)")))
        folders[resolved.folder] = step.name
        if step.stage == "predict":
            source = next((s for s in recipe.steps if s.name == resolved.inputs.get("checkpoint")), None)
            if source is not None and (source.stage != "train" or source.method != step.method):
                problems.append((step.name, _where(recipe.source, f"step {step.name!r}: predict {step.method} reads "
                                                                  f"a checkpoint: its input must be a train step of "
                                                                  f"the same model, not {source.name!r}")))
    return problems


def resolve_recipe(recipe: Recipe) -> list[ResolvedStep]:
    """Check every step against the registries; build configs; link inputs to the methods' upstream roles.

    Raises :class:`ConfigError` listing every problem (each names its step) before anything runs.
    """
    problems = check_recipe(recipe)
    if problems:
        raise ConfigError(problems[0][1] if len(problems) == 1 else
                          f"{len(problems)} problems in the recipe:\n  " + "\n  ".join(m for _, m in problems))
    return [_resolve_step(step, recipe.source) for step in recipe.steps]
