"""Config resolution: a composed Hydra config in, a :class:`Plan` out; no stage runs here.

Hydra does every merge. The method x budget blocks are specialising configs (``conf/method_budget/<method>_<budget>
.yaml``), the budget's protocol settings are ``conf/protocol_budget/<budget>.yaml``, and every protocol's options are
composed under ``protocols.<name>``: a command-line override wins by Hydra's own precedence, and nothing here reads
a YAML file. :func:`make_plan` checks every option before any work, so a mistake costs seconds, not a pretraining.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from bench import distributed
from bench.backbones import build_backbone, input_multiple
from bench.engine import pick_device, schedule_config
from bench.protocols.base import protocol_values, resolve_protocol
from bench.registry import DATASETS, METHODS, PROTOCOLS, SUITES
from bench.results import ResultsStore
from bench.suites import Cell, Suite
from bench.types import PROJECT_ROOT, DataError, default_data_dir, folder_problem, no_corpus_labels

CONF_DIR = PROJECT_ROOT / "conf"


class UserError(Exception):
    """A mistake in the user's options or data: reported as one line, exit code 2."""


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """Everything resolved from the config that the stages need."""

    suite: Suite
    method: str
    method_cfg: dict[str, Any]
    method_train: dict[str, Any]
    backbone: str
    backbone_kwargs: dict[str, Any]
    budget: str
    roi: tuple[int, ...]
    pretrain_steps: int
    pretrain_batch: int
    transfer_steps: int
    transfer_batch: int
    num_workers: int
    device: torch.device
    runs_dir: Path
    store: ResultsStore
    data_root: str | None
    cache_dir: str | None
    progress: bool
    seeds: tuple[int, ...]
    protocol: tuple[str, ...] | None  # protocol=NAME or protocol=[A,B]: only these; None: every protocol
    pretrain_seed: int  # the seed of the pretraining the transfer seeds use (unless tied)
    label_fraction: float | None = None
    task: str | None = None
    spatial_dims: int = 3
    allow_leakage: bool = False
    transfer_evaluations: int | None = None
    protocols: dict[str, Any] | None = None  # every protocol's options as composed: {protocol: {kind: {k: v}}}
    preprocessing: dict[str, Any] | None = None  # the suite's, with `suite.preprocessing.*` overrides merged
    # pretrain_seed=tied: each transfer seed uses its own pretraining with the same seed (see pipeline_plans)
    tied_pretrain_seed: bool = False
    config_yaml: str = ""  # the resolved config, written into every cell's run directory


TIED = "tied"


def parse_pretrain_seed(value: Any) -> int | str:
    """The ``pretrain_seed`` option: a non-negative integer, or ``tied``."""
    if isinstance(value, str) and value.strip().lower() == TIED:
        return TIED
    seed = None
    if isinstance(value, int) and not isinstance(value, bool):
        seed = value
    elif isinstance(value, str) and value.strip().isdigit():
        seed = int(value)
    if seed is None or seed < 0:
        raise UserError(
            f"pretrain_seed={value!r}: expected a non-negative integer (the seed of the pretraining every "
            f"transfer seed uses) or `tied` (each transfer seed uses its own pretraining with the same "
            f"seed)"
        )
    return seed


def pipeline_plans(plan: Plan) -> list[Plan]:
    """The plan as whole pipeline runs, one pretraining each: the plan itself, or with ``pretrain_seed=tied`` one
    plan per transfer seed, pretrained with that seed (seed s transfers the encoder pretrained with seed s)."""
    if not plan.tied_pretrain_seed:
        return [plan]
    return [replace(plan, seeds=(s,), pretrain_seed=s, tied_pretrain_seed=False) for s in plan.seeds]


def cell_key(cell: Cell, pretrain_seed: int) -> str:
    """A cell's key with its pretraining seed: ``.../s<seed>/p<k>``. Seed 0 adds nothing, so the cell ids of every
    store and published CSV written before the pretraining seed was part of a cell's identity (all at seed 0)
    stay valid, and so do their run directories."""
    return cell.key if pretrain_seed == 0 else f"{cell.key}/p{pretrain_seed}"


def cell_id(plan: Plan, cell: Cell) -> str:
    return f"{plan.suite.name}/v{plan.suite.version}/{plan.method}/{plan.budget}/{cell_key(cell, plan.pretrain_seed)}"


def _plain_dict(node: Any) -> dict[str, Any]:
    """A config node (possibly empty or missing) as a plain dict."""
    if node is None:
        return {}
    if OmegaConf.is_config(node):
        return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
    return dict(node)


PREPROCESS_KEYS = ("a_min", "a_max", "spacing", "size")


def suite_preprocessing(suite: Suite, override: Any) -> dict[str, Any]:
    """The suite's preprocessing with the config's ``suite.preprocessing`` keys over it (a paper's own
    spacing or window: ``+suite.preprocessing.spacing=[1.5,1.5,2.0]``); the cache keys follow."""
    values = dict(suite.preprocessing)
    extra = _plain_dict(override)
    unknown = sorted(set(extra) - set(PREPROCESS_KEYS))
    if unknown:
        raise UserError(
            f"suite.preprocessing: unknown key(s) {', '.join(unknown)}; known: {', '.join(PREPROCESS_KEYS)}"
        )
    return values | extra


def make_plan(cfg: DictConfig) -> Plan:
    """Resolve and check the whole config: every name, option and selection is refused here, before any work."""
    suite = SUITES.get(cfg.suite.name)
    METHODS.get(cfg.method.name)
    budget = cfg.budget
    spatial = DATASETS.get(suite.pretrain_dataset).info.spatial_dims
    _check_method_dims(cfg, suite, spatial)
    _check_corpus_labels(cfg, suite)
    backbone, roi, suffix = _geometry(cfg, suite, spatial)
    caps = cfg.suite.get("budget_caps") or {}
    _check_scalars(cfg)
    _check_budget(cfg, backbone, roi, suffix, spatial)
    seeds = suite.seeds if cfg.seed is None else (int(cfg.seed),)
    pretrain_seed = parse_pretrain_seed(cfg.get("pretrain_seed", 0))
    protocol, fraction, task = _selection(cfg, suite)
    _check_folder(Path(str(cfg.runs_dir)), "runs_dir")
    cache = cfg.data.get("cache_dir")
    _check_folder(Path(str(cache)) if cache else default_data_dir(), "data.cache_dir" if cache else "SSLBENCH_DATA")
    try:
        store = ResultsStore(cfg.results.url)
        store.check()  # before any data generation or training, not after hours of it
    except ValueError as e:
        raise UserError(str(e)) from None
    threads = budget.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    plan = Plan(
        suite=suite,
        method=cfg.method.name,
        method_cfg=_plain_dict(cfg.method.get("config")),
        method_train=_plain_dict(cfg.method.get("train")),
        backbone=backbone["name"],
        backbone_kwargs=dict(backbone.get("kwargs") or {}),
        budget=budget.name,
        roi=roi,
        pretrain_steps=min(budget.pretrain.steps, caps.get("pretrain_steps") or 10**12),
        pretrain_batch=budget.pretrain.get(f"batch_size{suffix}", budget.pretrain.batch_size),
        transfer_steps=min(budget.transfer.steps, caps.get("transfer_steps") or 10**12),
        transfer_batch=budget.transfer.get(f"batch_size{suffix}", budget.transfer.batch_size),
        num_workers=int(budget.num_workers),
        device=_device(cfg),
        runs_dir=Path(cfg.runs_dir),
        store=store,
        data_root=cfg.data.root,
        cache_dir=cfg.data.cache_dir,
        progress=bool(cfg.progress),
        seeds=tuple(seeds),
        protocol=protocol,
        pretrain_seed=seeds[0] if isinstance(pretrain_seed, str) else pretrain_seed,  # str: TIED
        tied_pretrain_seed=pretrain_seed == TIED,
        label_fraction=fraction,
        task=task,
        spatial_dims=int(spatial),
        allow_leakage=bool(cfg.get("allow_leakage", False)),
        transfer_evaluations=budget.transfer.get("evaluations"),
        protocols=_plain_dict(cfg.get("protocols")),
        preprocessing=suite_preprocessing(suite, cfg.suite.get("preprocessing")),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
    )
    _check_world(plan, suffix)
    if cfg.get("stage") != "leaderboard":
        try:  # the method's options, before any data generation (else a typo surfaces only at pretraining)
            cls = METHODS.get(plan.method)
            mcfg = cls.make_config(plan.method_cfg)
        except (TypeError, ValueError) as e:
            said = str(e).startswith(f"{plan.method}: ")  # a method's own message may name it already
            raise UserError(str(e) if said else f"method {plan.method}: {e}") from None
        try:  # the files it names (a released checkpoint), read before any work
            cls.check_inputs(mcfg, lambda: build_backbone(plan.backbone, **plan.backbone_kwargs))
        except (DataError, TypeError, ValueError) as e:
            said = isinstance(e, DataError) or str(e).startswith(f"{plan.method}: ")
            raise UserError(str(e) if said else f"method {plan.method}: {e}") from None
        try:
            schedule_config(plan.method_train, plan.pretrain_steps, plan.pretrain_batch)
        except (TypeError, ValueError) as e:
            raise UserError(f"method {plan.method} train options (method.train): {e}") from None
        _check_protocol_options(plan)
    return plan


def _device(cfg: DictConfig) -> torch.device:
    """The configured device; under torchrun, this process's GPU (``cuda:LOCAL_RANK``) in its joined process
    group."""
    try:
        return distributed.init(pick_device(cfg.device))
    except ValueError as e:
        raise UserError(str(e)) from None


def _check_world(plan: Plan, suffix: str) -> None:
    """Batch sizes are global: under torchrun each must split evenly among the processes, refused by its option's
    name before any work (an uneven split would weight samples unequally)."""
    for stage, batch in (("pretrain", plan.pretrain_batch), ("transfer", plan.transfer_batch)):
        try:
            distributed.per_device(int(batch), f"budget.{stage}.batch_size{suffix}")
        except ValueError as e:
            raise UserError(str(e)) from None


def _check_scalars(cfg: DictConfig) -> None:
    """The top-level options' types and values, refused by name before any work (a string seed or a device this
    machine lacks would otherwise end in a traceback, some only at the first training step)."""
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UserError(f"seed={seed!r}: expected a non-negative integer, or null for the suite's seeds")
    for key in ("progress", "publish", "allow_leakage"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, bool):
            raise UserError(f"{key}={value!r}: expected true or false")
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu"):
        head, _, index = device.partition(":")
        if head != "cuda" or (index and not index.isdigit()):
            raise UserError(f"device={device!r}: expected auto, cpu, cuda or cuda:N")
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"device={device}: this machine has no CUDA device (use device=cpu or device=auto)")
        if index and int(index) >= count:
            raise UserError(f"device={device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def _check_folder(path: Path, key: str) -> None:
    """A folder the run will write into: refused by name before any work (nothing is created here)."""
    if (why := folder_problem(path)) is not None:
        raise UserError(f"{key}={path}: {why}")


def _whole(value: Any, key: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{key}={value!r}: expected a whole number >= {least}")
    return value


def _check_budget(cfg: DictConfig, backbone: dict[str, Any], roi: tuple, suffix: str, spatial: int) -> None:
    """The budget's step counts, batch sizes, workers and ROI, refused by name before any work: a negative step
    count would otherwise run a whole job that trains nothing, a zero batch fail inside the data loader, an ROI
    the backbone cannot tile fail at the first forward pass."""
    budget = cfg.budget
    caps = cfg.suite.get("budget_caps") or {}
    for stage in ("pretrain", "transfer"):
        _whole(budget[stage].get("steps"), f"budget.{stage}.steps", 1)
        key = f"batch_size{suffix}" if f"batch_size{suffix}" in budget[stage] else "batch_size"
        _whole(budget[stage].get(key), f"budget.{stage}.{key}", 1)
        if caps.get(f"{stage}_steps") is not None:
            _whole(caps.get(f"{stage}_steps"), f"suite.budget_caps.{stage}_steps", 1)
    _whole(budget.get("num_workers", 0), "budget.num_workers", 0)
    if budget.get("threads") is not None:
        _whole(budget.get("threads"), "budget.threads", 1)
    key = f"budget.roi{suffix}" if not caps.get(f"roi{suffix}") else f"suite.budget_caps.roi{suffix}"
    if len(roi) != spatial or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in roi):
        raise UserError(f"{key}={list(roi)}: expected {spatial} whole numbers >= 1, one per axis")
    multiple = input_multiple(str(backbone.get("name")))
    if any(r % multiple for r in roi):
        raise UserError(
            f"{key}={list(roi)}: backbone {backbone.get('name')!r} needs every side a multiple of {multiple}"
        )


def _check_method_dims(cfg: DictConfig, suite: Suite, spatial: int) -> None:
    """A 2D-only method on a 3D suite (or the reverse) is refused by name. stage=leaderboard reads every method's
    stored rows, so the (default) method plays no part there."""
    tags = METHODS.tags(cfg.method.name)
    if cfg.get("stage") != "leaderboard" and {"2d", "3d"} & tags and f"{spatial}d" not in tags:
        dims = "/".join(sorted(t.upper() for t in tags & {"2d", "3d"}))
        raise UserError(f"method {cfg.method.name!r} is a {dims} method; suite {suite.name!r} is {spatial}D")


def _check_corpus_labels(cfg: DictConfig, suite: Suite) -> None:
    """A method that pretrains with labels (``needs_corpus_labels``) on a corpus whose dataset declares none
    (``has_corpus_labels``) is refused by name, before any data generation; the message names the suites it can
    run on."""
    method = METHODS.get(cfg.method.name)
    if cfg.get("stage") == "leaderboard" or not getattr(method, "needs_corpus_labels", False):
        return
    if not getattr(DATASETS.get(suite.pretrain_dataset), "has_corpus_labels", False):
        usable = [
            s
            for s in SUITES.names()
            if getattr(DATASETS.get(SUITES.get(s).pretrain_dataset), "has_corpus_labels", False)
        ]
        raise UserError(
            f"method {cfg.method.name!r}: {no_corpus_labels(suite.pretrain_dataset)} (the corpus of suite "
            f"{suite.name!r}); suites with a labelled corpus: {', '.join(usable) or '(none)'}"
        )


def _geometry(cfg: DictConfig, suite: Suite, spatial: int) -> tuple[dict[str, Any], tuple[int, ...], str]:
    """The backbone config, the input size and the key suffix (``""`` or ``"_2d"``). A budget names one backbone
    and input size per dimensionality (its own defaults list composes ``budget.backbone``/``budget.backbone_2d``);
    the suite's data decide which applies, and ``backbone=NAME`` on the command line wins over both."""
    budget = cfg.budget
    suffix = "" if spatial == 3 else f"_{spatial}d"
    chosen = cfg.get("backbone") or budget.get(f"backbone{suffix}")
    if chosen is None:
        raise UserError(f"budget {budget.name!r} has no backbone{suffix} for the {spatial}D suite {suite.name!r}")
    caps = cfg.suite.get("budget_caps") or {}
    roi = tuple(caps.get(f"roi{suffix}") or budget[f"roi{suffix}"])
    return _plain_dict(chosen), roi, suffix


def _selection(cfg: DictConfig, suite: Suite) -> tuple[tuple[str, ...] | None, float | None, str | None]:
    """``protocol=`` (one name or a list, e.g. ``protocol=[voxel_probe,knn_seg]``: one process runs them all, so
    the cells share what they cache), ``label_fraction=`` and ``task=``: each must be one the suite (and the chosen
    task) offers."""
    value = cfg.get("protocol")
    protocol: tuple[str, ...] | None = None
    if value is not None:
        protocol = tuple(str(p) for p in value) if isinstance(value, ListConfig) else (str(value),)
        if not protocol:
            raise UserError("protocol=[]: name at least one protocol, or leave protocol unset for all of them")
        names = sorted({p for t in suite.tasks for p in t.protocols})
        for name in protocol:
            PROTOCOLS.get(name)
            if name not in names:
                # else a run would pretrain for minutes and then find no cell to run
                raise UserError(
                    f"protocol={name}: no task of suite {suite.name!r} has it; its tasks offer {', '.join(names)}"
                )
    fraction = cfg.get("label_fraction")
    if fraction is not None:
        offered = sorted({f for t in suite.tasks for f in t.label_fractions})
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            raise UserError(
                f"label_fraction={fraction!r}: not a number; suite {suite.name!r} offers {offered}"
            ) from None
        if not any(abs(fraction - f) < 1e-9 for f in offered):
            raise UserError(f"label_fraction={fraction}: suite {suite.name!r} offers only {offered}")
    task = cfg.get("task")
    if task is not None:
        task = str(task)
        names = [t.name for t in suite.tasks]
        if task not in names:
            raise UserError(f"task={task}: suite {suite.name!r} has tasks {', '.join(names)}")
        chosen = next(t for t in suite.tasks if t.name == task)
        for name in [p for p in protocol or () if p not in chosen.protocols]:
            raise UserError(
                f"task={task} of suite {suite.name!r} has no protocol {name!r}; it offers {', '.join(chosen.protocols)}"
            )
        if fraction is not None and not any(abs(fraction - f) < 1e-9 for f in chosen.label_fractions):
            raise UserError(
                f"label_fraction={fraction}: task {task!r} of suite {suite.name!r} offers only "
                f"{sorted(chosen.label_fractions)}"
            )
    return protocol, fraction, task


def protocol_options(plan: Plan, name: str, kind: str) -> dict[str, Any]:
    """Protocol ``name``'s options for a task of ``kind``: ``protocols.<name>.<kind>`` as composed (the protocol's
    YAML, then the budget's ``conf/protocol_budget/<budget>.yaml``, then the command line)."""
    composed = plan.protocols or {}
    if name not in composed:
        raise UserError(
            f"protocol {name!r} has no options in the config: conf/protocols/{name}.yaml must exist and "
            f"conf/config.yaml's defaults must list `- protocols@protocols.{name}: {name}`"
        )
    return protocol_values(composed[name], kind)


def protocol_config(plan: Plan, name: str, kind: str, task_options: dict[str, Any] | None = None) -> Any:
    """The protocol class for a task kind and its typed config: the composed options with the task's own
    (``Task.protocol_options``) over them. An unknown option or a wrong value is a :class:`UserError`."""
    try:
        cls = resolve_protocol(name, kind)
        return cls, cls.make_config(protocol_options(plan, name, kind) | dict(task_options or {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"protocols.{name}.{kind}: {e}") from None


def _check_protocol_options(plan: Plan) -> None:
    """Every protocol the plan will run builds its config, before any pretraining."""
    for t in plan.suite.tasks:
        if plan.task not in (None, t.name):
            continue
        for name in t.protocols:
            if plan.protocol is None or name in plan.protocol:
                protocol_config(plan, name, t.kind, t.protocol_options.get(name))


def leaderboard_options(cfg: DictConfig) -> Any:
    """The leaderboard's statistical settings: ``leaderboard.*`` of the config, margins from the suite's YAML with
    ``leaderboard.margins`` on top. A margin must be a non-negative number and alpha lie in (0, 1)."""
    from bench.leaderboard import Options

    lb = _plain_dict(cfg.get("leaderboard"))
    margins = {**_plain_dict(cfg.suite.get("margins")), **_plain_dict(lb.get("margins"))}
    for metric, value in margins.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"margins.{metric}={value!r}: a margin is a non-negative number in the metric's units")
    alpha = lb.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"leaderboard.alpha={alpha!r}: must be a number in (0, 1)")
    baseline = str(lb.get("baseline", "random"))
    if baseline not in METHODS:  # else the board renders with no baseline column and says nothing
        raise UserError(f"leaderboard.baseline={baseline!r}: not a method; known: {', '.join(METHODS.names())}")
    bayesian = lb.get("bayesian", False)
    if not isinstance(bayesian, bool):
        raise UserError(f"leaderboard.bayesian={bayesian!r}: expected true or false")
    return Options(
        baseline=baseline,
        alpha=float(alpha),
        bayesian=bool(lb.get("bayesian", False)),
        margins={k: float(v) for k, v in margins.items()},
    )


def leaderboard_suite(suite: Suite, version: Any, stage: str) -> Suite:
    """The suite as the leaderboard renders it: its current version, or ``suite_version=K`` for the record of an
    earlier one (only with stage=leaderboard: cells are always run on the current data)."""
    if version is None:
        return suite
    if stage != "leaderboard":
        raise UserError(
            f"suite_version={version} applies only to stage=leaderboard: runs always use the current "
            f"data (suite {suite.name!r} v{suite.version})"
        )
    try:
        v = int(version)
    except (TypeError, ValueError):
        v = None
    if v is None or isinstance(version, (bool, float)) or not 1 <= v <= suite.version:
        raise UserError(f"suite_version={version!r}: suite {suite.name!r} has versions 1 to {suite.version}")
    return replace(suite, version=v, tasks=suite.tasks_of(v))


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config for these command-line overrides, composed by Hydra exactly as ``run_bench.py`` composes
    it (for tools and tests that need a budget's or a method's resolved options without running anything)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
