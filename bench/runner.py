"""Stages of a run: validate -> pretrain -> transfer (cells) -> leaderboard.

It builds everything from the registries by the names in the config; it knows no method, dataset
or suite by name.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench import leakage
from bench.backbones import build_backbone
from bench.data import PretrainDataset, Preprocess, PreprocessedCache, match_channels
from bench.engine import earlier_wall, fit, pick_device, schedule_config, seed_everything
from bench.export import load_meta, save_export
from bench.protocols.base import TransferContext, protocol_values, resolve_protocol
from bench.provenance import git_sha
from bench.registry import DATASETS, METHODS, PROTOCOLS, SUITES
from bench.results import ResultsStore
from bench.suites import Cell, Suite, expand
from bench.types import PROJECT_ROOT, default_data_dir, load_split_file

CONF_DIR = PROJECT_ROOT / "conf"


class UserError(Exception):
    """A mistake in the user's options or data: reported as one line, exit code 2."""


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


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
    protocol: str | None
    pretrain_seed: int                # the seed of the pretraining the transfer seeds use (unless tied)
    label_fraction: float | None = None
    task: str | None = None
    spatial_dims: int = 3
    allow_leakage: bool = False
    transfer_evaluations: int | None = None
    transfer_protocols: dict[str, Any] | None = None    # the budget's protocol settings: {protocol: {kind: {k: v}}}
    preprocessing: dict[str, Any] | None = None   # the suite's, with `suite.preprocessing.*` overrides merged
    # pretrain_seed=tied: each transfer seed uses its own pretraining with the same seed (see pipeline_plans)
    tied_pretrain_seed: bool = False


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
        raise UserError(f"pretrain_seed={value!r}: expected a non-negative integer (the seed of the pretraining every "
                        f"transfer seed uses) or `tied` (each transfer seed uses its own pretraining with the same "
                        f"seed)")
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
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


def load_group_option(group: str, name: str) -> dict[str, Any]:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"{path}: no such {group} config")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def budget_method_config(cfg: DictConfig, budget: str) -> dict[str, Any]:
    """The method's options with its ``budget_config.<budget>`` block merged in (e.g. ASA's paper geometry at
    budget=paper). An option the user set on the command line wins: a block only replaces values that still
    equal the method YAML's defaults."""
    values = _plain_dict(cfg.method.get("config"))
    block = _plain_dict((cfg.method.get("budget_config") or {}).get(budget))
    if not block:
        return values
    path = CONF_DIR / "method" / f"{cfg.method.name}.yaml"
    defaults = _plain_dict(OmegaConf.load(path).get("config")) if path.is_file() else {}
    for key, value in block.items():
        if key not in values:
            raise UserError(f"method {cfg.method.name}: budget_config.{budget}.{key} is not an option of its config")
        if key not in defaults or values[key] == defaults[key]:
            values[key] = value
    return values


PREPROCESS_KEYS = ("a_min", "a_max", "spacing", "size")


def suite_preprocessing(suite: Suite, override: Any) -> dict[str, Any]:
    """The suite's preprocessing with the config's ``suite.preprocessing`` keys over it (a paper's own
    spacing or window: ``+suite.preprocessing.spacing=[1.5,1.5,2.0]``); the cache keys follow."""
    values = dict(suite.preprocessing)
    extra = _plain_dict(override)
    unknown = sorted(set(extra) - set(PREPROCESS_KEYS))
    if unknown:
        raise UserError(f"suite.preprocessing: unknown key(s) {', '.join(unknown)}; known: {', '.join(PREPROCESS_KEYS)}")
    return values | extra


def make_plan(cfg: DictConfig) -> Plan:
    suite = SUITES.get(cfg.suite.name)
    METHODS.get(cfg.method.name)
    budget = cfg.budget
    caps = cfg.suite.get("budget_caps") or {}
    spatial = DATASETS.get(suite.pretrain_dataset).info.spatial_dims
    # a budget names one backbone and input size per dimensionality; the suite's data decides which applies
    suffix = "" if spatial == 3 else f"_{spatial}d"
    if budget.get(f"backbone{suffix}") is None:
        raise UserError(f"budget {budget.name!r} has no backbone{suffix} for the {spatial}D suite {suite.name!r}")
    bb_cfg = cfg.get("backbone") or load_group_option("backbone", budget[f"backbone{suffix}"])
    roi = tuple(caps.get(f"roi{suffix}") or budget[f"roi{suffix}"])
    tags = METHODS.tags(cfg.method.name)
    # stage=leaderboard reads every method's stored rows: the (default) method plays no part
    if cfg.get("stage") != "leaderboard" and {"2d", "3d"} & tags and f"{spatial}d" not in tags:
        dims = "/".join(sorted(t.upper() for t in tags & {"2d", "3d"}))
        raise UserError(f"method {cfg.method.name!r} is a {dims} method; suite {suite.name!r} is {spatial}D")
    seeds = suite.seeds if cfg.seed is None else (int(cfg.seed),)
    pretrain_seed = parse_pretrain_seed(cfg.get("pretrain_seed", 0))
    protocol = cfg.protocol.name if cfg.get("protocol") is not None else None
    if protocol is not None:
        PROTOCOLS.get(protocol)
    fraction = cfg.get("label_fraction")
    if fraction is not None:
        offered = sorted({f for t in suite.tasks for f in t.label_fractions})
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            raise UserError(f"label_fraction={fraction!r}: not a number; suite {suite.name!r} offers {offered}") from None
        if not any(abs(fraction - f) < 1e-9 for f in offered):
            raise UserError(f"label_fraction={fraction}: suite {suite.name!r} offers only {offered}")
    task = cfg.get("task")
    if task is not None:
        task = str(task)
        names = [t.name for t in suite.tasks]
        if task not in names:
            raise UserError(f"task={task}: suite {suite.name!r} has tasks {', '.join(names)}")
        chosen = next(t for t in suite.tasks if t.name == task)
        if protocol is not None and protocol not in chosen.protocols:
            raise UserError(f"task={task} of suite {suite.name!r} has no protocol {protocol!r}; "
                            f"it offers {', '.join(chosen.protocols)}")
        if fraction is not None and not any(abs(fraction - f) < 1e-9 for f in chosen.label_fractions):
            raise UserError(f"label_fraction={fraction}: task {task!r} of suite {suite.name!r} offers only "
                            f"{sorted(chosen.label_fractions)}")
    threads = budget.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    runs_dir = Path(cfg.runs_dir)
    method_cfg = budget_method_config(cfg, budget.name)
    return Plan(
        suite=suite, method=cfg.method.name,
        method_cfg=method_cfg, method_train=_plain_dict(cfg.method.get("train")),
        backbone=bb_cfg["name"], backbone_kwargs=dict(bb_cfg.get("kwargs") or {}), budget=budget.name, roi=roi,
        pretrain_steps=min(budget.pretrain.steps, caps.get("pretrain_steps") or 10**12),
        pretrain_batch=budget.pretrain.get(f"batch_size{suffix}", budget.pretrain.batch_size),
        transfer_steps=min(budget.transfer.steps, caps.get("transfer_steps") or 10**12),
        transfer_batch=budget.transfer.get(f"batch_size{suffix}", budget.transfer.batch_size), num_workers=int(budget.num_workers),
        device=pick_device(cfg.device), runs_dir=runs_dir, store=ResultsStore(cfg.results.url),
        data_root=cfg.data.root, cache_dir=cfg.data.cache_dir, progress=bool(cfg.progress), seeds=tuple(seeds),
        protocol=protocol,
        pretrain_seed=seeds[0] if pretrain_seed == TIED else pretrain_seed, tied_pretrain_seed=pretrain_seed == TIED,
        label_fraction=fraction, task=task, spatial_dims=int(spatial),
        allow_leakage=bool(cfg.get("allow_leakage", False)),
        transfer_evaluations=budget.transfer.get("evaluations"),
        transfer_protocols=_plain_dict(budget.transfer.get("protocols")),
        preprocessing=suite_preprocessing(suite, cfg.suite.get("preprocessing")),
    )


def dataset(plan: Plan, name: str):
    return DATASETS.get(name)(root=plan.data_root, cache_dir=plan.cache_dir)


def split_hash(dataset_name: str) -> str:
    """Hash of the committed split file a dataset reads (several datasets may share one)."""
    cls = DATASETS.get(dataset_name)
    return config_hash(load_split_file(getattr(cls, "split_name", None) or dataset_name))


def suite_preprocess(plan: Plan) -> Preprocess:
    pp = dict(plan.preprocessing if plan.preprocessing is not None else plan.suite.preprocessing)
    if plan.spatial_dims == 2:
        pp.setdefault("size", tuple(plan.roi))   # 2D images are fed whole, at the budget's input size
    return Preprocess.from_config(pp)


def method_identity(plan: Plan) -> dict[str, Any]:
    """What the method itself says decides its export beyond its options (e.g. a checkpoint's sha256)."""
    cls = METHODS.get(plan.method)
    try:
        return cls.cache_identity(cls.make_config(plan.method_cfg))
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def pretrain_identity(plan: Plan) -> dict[str, Any]:
    return {"method": plan.method, "method_cfg": plan.method_cfg, "train": plan.method_train,
            "backbone": plan.backbone, "backbone_kwargs": plan.backbone_kwargs, "roi": plan.roi,
            "steps": plan.pretrain_steps, "batch": plan.pretrain_batch, "corpus": plan.suite.pretrain_dataset,
            "corpus_splits": plan.suite.pretrain_splits, "corpus_split_hash": split_hash(plan.suite.pretrain_dataset),
            "preprocess": asdict(suite_preprocess(plan)), "seed": plan.pretrain_seed,
            # a suite's version goes up when its data change (abdomen v2: the orientation fix), and an encoder
            # pretrained on the old corpus must not be reused; version 1 adds no key, so older caches stay valid
            **({"suite_version": plan.suite.version} if plan.suite.version != 1 else {}),
            **({"method_identity": mi} if (mi := method_identity(plan)) else {})}


def preprocessed_cache(plan: Plan) -> PreprocessedCache:
    return PreprocessedCache((Path(plan.cache_dir) if plan.cache_dir else default_data_dir()) / "preprocessed")


def hash_cache(plan: Plan) -> leakage.HashCache:
    return leakage.HashCache((Path(plan.cache_dir) if plan.cache_dir else default_data_dir()) / "content_hashes.json")


CORPUS_HASHES = "corpus_hashes.json"


def corpus_hashes(plan: Plan, run_dir: Path, method_pretrains: bool) -> set[str]:
    """Content hashes of the pretraining corpus, kept next to the export (recomputed if absent)."""
    path = run_dir / CORPUS_HASHES
    if path.is_file():
        return set(json.loads(path.read_text()))
    hashes: set[str] = set()
    if method_pretrains:
        ds = dataset(plan, plan.suite.pretrain_dataset)
        ds.prepare(progress=plan.progress)
        cache = hash_cache(plan)
        hashes = set(leakage.split_hashes(ds, plan.suite.pretrain_splits, cache))
        cache.save()
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sorted(hashes)))
    return hashes


def check_leakage(plan: Plan, corpus: set[str], tasks, memo: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Per task, the val/test records whose content is in the pretraining corpus; an error unless allowed."""
    found: dict[str, list[str]] = {}
    cache = hash_cache(plan)
    for task in tasks:
        if task.dataset not in memo:
            ds = dataset(plan, task.dataset)
            ds.prepare(progress=plan.progress)
            splits = [s for s in ("val", "test") if s in load_split_file(getattr(ds, "split_name", None) or task.dataset)]
            memo[task.dataset] = leakage.split_hashes(ds, splits, cache)
        hit = leakage.leaks(corpus, memo[task.dataset])
        if hit:
            found[task.name] = hit
    cache.save()
    if found and not plan.allow_leakage:
        detail = "; ".join(f"task {t}: {len(ids)} case(s) ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
                           for t, ids in found.items())
        raise UserError(f"leakage: the pretraining corpus {plan.suite.pretrain_dataset} {list(plan.suite.pretrain_splits)} "
                        f"contains evaluation cases by content: {detail}. Remove them from the corpus, or pass "
                        f"allow_leakage=true to run anyway (recorded with the results and marked on the leaderboard)")
    return found


def pretrain(plan: Plan) -> tuple[Path, str]:
    """Pretrain once per (method, corpus, budget, pretraining seed); return the encoder export path and its hash
    (the seed is part of the pretraining identity, so each pretraining seed has its own export and run directory)."""
    ident = pretrain_identity(plan)
    h = config_hash(ident)
    run_dir = plan.runs_dir / "pretrain" / plan.method / h
    export = run_dir / "export.pt"
    if export.is_file():
        print(f"[pretrain] {plan.method}: cached export {export}")
        check_leakage(plan, corpus_hashes(plan, run_dir, method_cls_pretrains(plan)), plan.suite.tasks, {})
        return export, h
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(ident, indent=1, default=str))
    seed_everything(plan.pretrain_seed)
    method_cls = METHODS.get(plan.method)
    backbone = build_backbone(plan.backbone, **plan.backbone_kwargs)
    try:
        method = method_cls(backbone, method_cls.make_config(plan.method_cfg))
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    meta = {"method": plan.method, "config_hash": h, "git_sha": git_sha(), "corpus": plan.suite.pretrain_dataset,
            "device": device_name(plan.device), "device_type": plan.device.type,
            "corpus_split_hash": ident["corpus_split_hash"], "preprocess": ident["preprocess"],
            **({"method_identity": ident["method_identity"]} if "method_identity" in ident else {})}
    if not method.pretrains:
        try:
            encoder = method.export_encoder()
        except ValueError as e:  # e.g. an external checkpoint that was not given
            raise UserError(str(e)) from None
        corpus_hashes(plan, run_dir, False)
        save_export(encoder, export, meta | {"pretrain_steps": 0}, extras=method.export_extras())
        return export, h
    ds = dataset(plan, plan.suite.pretrain_dataset)
    ds.prepare(progress=plan.progress)
    pp = suite_preprocess(plan)
    volumes, hashes, cache, disk = [], set(), hash_cache(plan), preprocessed_cache(plan)
    records = [rec for split in plan.suite.pretrain_splits for rec in ds.records(split)]
    from tqdm.auto import tqdm

    for rec in tqdm(records, desc=f"load {plan.suite.pretrain_dataset}", disable=not plan.progress, unit="vol"):
        # one read serves both the content hash and the preprocessing when either is not cached yet
        entry = disk.entry(ds.registry_name, rec, pp)
        cached = entry is not None and (entry / "meta.json").is_file() and cache.known(rec)
        raw = None if cached else ds.load(rec)
        hashes.add(cache.record_hash(ds, rec, None if raw is None else raw["image"]))
        image = disk.get(ds, rec, pp, raw)["image"]   # the label too: transfer cells share the entry
        try:
            volumes.append(match_channels(image, backbone.in_channels, f"{plan.suite.pretrain_dataset}/{rec.id}"))
        except ValueError as e:
            raise UserError(str(e)) from None
    cache.save()
    if not volumes:
        raise UserError(f"pretraining corpus {plan.suite.pretrain_dataset} {plan.suite.pretrain_splits} is empty")
    # fail before hours of pretraining, not after
    check_leakage(plan, hashes, plan.suite.tasks, {})
    (run_dir / CORPUS_HASHES).write_text(json.dumps(sorted(hashes)))
    loader = torch.utils.data.DataLoader(
        PretrainDataset(volumes, plan.roi, method.views, samples=max(plan.pretrain_batch * 50, 1),
                        seed=plan.pretrain_seed),
        batch_size=plan.pretrain_batch, num_workers=plan.num_workers, pin_memory=plan.device.type == "cuda",
        persistent_workers=plan.num_workers > 0)
    try:
        tcfg = schedule_config(plan.method_train, plan.pretrain_steps, plan.pretrain_batch,
                               checkpoint_every=max(1, min(50, plan.pretrain_steps // 4)),
                               log_every=max(1, min(10, plan.pretrain_steps // 10)))
    except (TypeError, ValueError) as e:
        raise UserError(f"method {plan.method} train options: {e}") from None
    try:
        # a schedule in corpus epochs (ASA's phase blocks) needs the corpus size and volumes per optimizer step
        method.bind_corpus(len(volumes), plan.pretrain_batch * tcfg.accumulate)
    except ValueError as e:
        raise UserError(f"method {plan.method}: {e}") from None
    res = fit(method, method.training_step, method.param_groups(tcfg.weight_decay), loader, tcfg, run_dir,
              device=plan.device, ema_pairs=method.ema_pairs(), ema_momentum=method.ema_momentum,
              after_step=method.after_optimizer_step, desc=f"pretrain {plan.method}",
              log_prefix=f"pretrain/{plan.method}", progress=plan.progress)
    save_export(method.export_encoder(), export, meta | {"pretrain_steps": res.steps, "wall_s": res.wall_s,
                                                         "final_loss": res.last_loss}, extras=method.export_extras())
    (run_dir / "last.ckpt").unlink(missing_ok=True)  # the export is the product; keep the disk small
    return export, h


def method_cls_pretrains(plan: Plan) -> bool:
    return bool(getattr(METHODS.get(plan.method), "pretrains", True))


def protocol_config(plan: Plan, cfg: DictConfig, name: str) -> dict[str, Any]:
    if cfg.get("protocol") is not None and cfg.protocol.name == name:
        return OmegaConf.to_container(cfg.protocol, resolve=True)  # type: ignore[return-value]
    return load_group_option("protocol", name)


def protocol_options(plan: Plan, cfg: DictConfig, name: str, kind: str) -> dict[str, Any]:
    """A protocol's options for one task kind, with the budget's ``transfer.protocols.<name>.<kind>`` block over
    them (a short schedule wants a larger learning rate; the same for every method). An option set on the command
    line wins: the block replaces only values that still equal the protocol YAML's."""
    values = protocol_values(protocol_config(plan, cfg, name), kind)
    block = dict(((plan.transfer_protocols or {}).get(name) or {}).get(kind) or {})
    if not block:
        return values
    defaults = protocol_values(load_group_option("protocol", name), kind)
    for key, value in block.items():
        if key not in defaults:
            raise UserError(f"budget {plan.budget}: transfer.protocols.{name}.{kind}.{key} is not an option of the "
                            f"{name} protocol for {kind} (conf/protocol/{name}.yaml)")
        if values.get(key) == defaults[key]:
            values[key] = value
    return values


def transfer_cells(plan: Plan) -> list[Cell]:
    """The plan's cells, less those of protocols that ignore the label fraction below the task's largest one, and
    less the repeats of a deterministic protocol (kNN): given one encoder its result is the same for every transfer
    seed, so it runs at the first of the plan's seeds only (per label fraction and draw), and says so."""
    cells, repeats = [], {}
    for cell in expand(plan.suite, plan.seeds, plan.protocol, plan.label_fraction, plan.task):
        try:
            proto_cls = resolve_protocol(cell.protocol, cell.task.kind)
        except ValueError as e:
            raise UserError(str(e)) from None
        if proto_cls.deterministic and cell.seed != plan.seeds[0]:
            repeats.setdefault(cell.protocol, set()).add(cell.seed)
        elif proto_cls.uses_label_fraction or cell.label_fraction == max(cell.task.label_fractions):
            cells.append(cell)
        elif plan.label_fraction is not None and plan.protocol is not None:
            raise UserError(f"protocol={cell.protocol} picks its own labelled examples and runs at label_fraction="
                            f"{max(cell.task.label_fractions):g} only (task {cell.task.name!r}); drop label_fraction="
                            f"{plan.label_fraction:g}")
    for protocol, seeds in repeats.items():
        rest = ", ".join(map(str, sorted(seeds)))
        print(f"[transfer] {protocol} is deterministic given the encoder: seeds {plan.seeds[0]}, {rest} are one run, "
              f"run once at seed {plan.seeds[0]} (pretraining seed {plan.pretrain_seed}); seeds {rest} are not run "
              f"again")
    return cells


def deterministic_repeat(plan: Plan, cell: Cell, ident: dict[str, Any], proto_cls: type) -> str | None:
    """For a deterministic protocol, the id of a complete cell that is this one at another transfer seed (same
    encoder, options and data; e.g. an earlier job of ``-m seed=0,1,2``), else None."""
    if not proto_cls.deterministic:
        return None
    for seed in sorted((set(plan.suite.seeds) | set(plan.seeds)) - {cell.seed}):
        other = replace(cell, seed=seed)
        if plan.store.is_complete(cell_id(plan, other), config_hash(ident | {"seed": seed})):
            return cell_id(plan, other)
    return None


def pretrain_compute(meta: dict[str, Any]) -> dict[str, Any]:
    """The pretraining's compute for a cell's row, from its export's metadata. None throughout when the harness
    ran no pretraining (random init, an imported checkpoint); hours None when the export predates the recording
    of its device (wall time only)."""
    if not meta.get("pretrain_steps") or meta.get("wall_s") is None:
        return {"pretrain_device": None, "pretrain_wall_s": None, "pretrain_gpu_hours": None,
                "pretrain_cpu_hours": None}
    wall, kind = float(meta["wall_s"]), meta.get("device_type")
    return {"pretrain_device": meta.get("device"), "pretrain_wall_s": wall,
            "pretrain_gpu_hours": None if kind is None else (wall / 3600 if kind == "cuda" else 0.0),
            "pretrain_cpu_hours": None if kind is None else (0.0 if kind == "cuda" else wall / 3600)}


def transfer(plan: Plan, cfg: DictConfig, export: Path, pretrain_hash: str) -> list[dict[str, Any]]:
    cells = transfer_cells(plan)
    pretrain_cost = pretrain_compute(load_meta(export))
    done: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    corpus = corpus_hashes(plan, export.parent, method_cls_pretrains(plan))
    eval_hashes: dict[str, dict[str, str]] = {}
    for cell in cells:
        try:
            proto_cls = resolve_protocol(cell.protocol, cell.task.kind)
            values = protocol_options(plan, cfg, cell.protocol, cell.task.kind)
            pcfg = proto_cls.make_config(values | dict(cell.task.protocol_options.get(cell.protocol, {})))
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from None
        leaked = check_leakage(plan, corpus, [cell.task], eval_hashes)
        ds = dataset(plan, cell.task.dataset)
        shash = split_hash(cell.task.dataset)
        ident = {"pretrain": pretrain_hash, "protocol": cell.protocol, "protocol_cfg": asdict(pcfg),
                 "task": cell.task.name, "fraction": cell.label_fraction, "draw": cell.draw, "seed": cell.seed,
                 "steps": plan.transfer_steps, "batch": plan.transfer_batch, "roi": plan.roi, "split": shash,
                 "preprocess": asdict(suite_preprocess(plan)),
                 **({"evaluations": plan.transfer_evaluations} if plan.transfer_evaluations else {})}
        # the pretraining seed enters through pretrain_hash (its identity holds the seed), so the config hash of a
        # cell at pretraining seed 0 is what it was before the seed was part of a cell's identity
        h = config_hash(ident)
        cid = cell_id(plan, cell)
        if plan.store.is_complete(cid, h):
            print(f"[transfer] skip {cid}: complete with config {h}")
            continue
        same = deterministic_repeat(plan, cell, ident, proto_cls)
        if same is not None:
            print(f"[transfer] skip {cid}: {cell.protocol} is deterministic given the encoder; it is the run stored "
                  f"as {same}")
            continue
        ds.prepare(progress=plan.progress)
        key = cell_key(cell, plan.pretrain_seed).replace("/", "_")
        run_dir = plan.runs_dir / "cells" / plan.suite.name / plan.method / plan.budget / key / h
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "cell.json").write_text(json.dumps(ident, indent=1, default=str))
        seed_everything(cell.seed)
        if plan.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(plan.device)
        start = dt.datetime.now(dt.timezone.utc)
        t0 = time.time()
        ctx = TransferContext(export_path=export, dataset=ds, cell=cell, run_dir=run_dir, device=plan.device,
                              preprocess=suite_preprocess(plan), roi=plan.roi, steps=plan.transfer_steps,
                              batch_size=plan.transfer_batch, num_workers=plan.num_workers,
                              progress=plan.progress, cache=cache, disk_cache=preprocessed_cache(plan),
                              evaluations=plan.transfer_evaluations)
        try:
            with earlier_wall() as earlier:
                result = proto_cls(pcfg).run(ctx)
        except ValueError as e:   # a protocol's complaint about the data or its options, e.g. an empty split
            raise UserError(f"{cid}: {e}") from None
        wall = time.time() - t0 + sum(earlier)
        on_gpu = plan.device.type == "cuda"
        peak = torch.cuda.max_memory_allocated(plan.device) / 2**20 if on_gpu else None
        row = {"cell_id": cid, "config_hash": h, "suite": plan.suite.name, "suite_version": plan.suite.version,
               "task": cell.task.name, "method": plan.method, "protocol": cell.protocol,
               "label_fraction": cell.label_fraction, "draw": cell.draw, "pretrain_seed": plan.pretrain_seed,
               "seed": cell.seed, "budget": plan.budget,
               "git_sha": git_sha(), "split_hash": shash, "start_time": start.isoformat(),
               "end_time": dt.datetime.now(dt.timezone.utc).isoformat(), "device": device_name(plan.device),
               "wall_s": wall, "gpu_hours": wall / 3600 if on_gpu else 0.0,
               "cpu_hours": 0.0 if on_gpu else wall / 3600, "peak_memory_mb": peak, "params": result.params,
               "pretrain_hash": pretrain_hash, "leakage_override": int(bool(leaked)), "run_dir": str(run_dir),
               **pretrain_cost}
        # run directory first, then the store: a row in the store always has its files
        (run_dir / "metrics.json").write_text(json.dumps({"summary": result.summary, "cell": row}, indent=1))
        import pandas as pd

        pd.DataFrame(result.rows).to_csv(run_dir / "per_case.csv", index=False)
        plan.store.write_cell(row, result.rows)
        print(f"[transfer] {cid}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.summary.items()))
        done.append(row)
    return done


def run(cfg: DictConfig) -> None:
    plan = make_plan(cfg)
    stage = cfg.stage
    if stage not in ("all", "validate", "pretrain", "transfer", "leaderboard"):
        raise UserError(f"unknown stage {stage!r}; known: all, validate, pretrain, transfer, leaderboard")
    board_suite = leaderboard_suite(plan.suite, cfg.get("suite_version"), stage)   # checked before any work
    options = leaderboard_options(cfg)
    if stage in ("all", "validate", "transfer"):
        names = {t.dataset for t in plan.suite.tasks if plan.task in (None, t.name)}
        problems = []
        for name in sorted(names):
            ds = dataset(plan, name)
            ds.prepare(progress=plan.progress)
            problems += ds.validate()
        if problems:
            raise UserError(f"{len(problems)} data problem(s): " + " | ".join(problems))
        if stage == "validate":
            print(f"[validate] {plan.suite.name}: all files of {', '.join(sorted(names))} passed")
            return
    if stage in ("all", "pretrain", "transfer"):
        # one pretraining per pipeline run: the plan's, or with pretrain_seed=tied one per transfer seed
        for pipeline in pipeline_plans(plan):
            if plan.tied_pretrain_seed:
                print(f"[pipeline] pretraining seed {pipeline.pretrain_seed}, transfer seed {pipeline.seeds[0]}")
            export, h = pretrain(pipeline)
            if stage in ("all", "transfer"):
                transfer(pipeline, cfg, export, h)
    if stage in ("all", "transfer", "leaderboard"):
        from bench import leaderboard

        path = leaderboard.write(board_suite, plan.store, plan.runs_dir / "leaderboards", options=options)
        print(f"[leaderboard] {path}")
        if cfg.publish:
            pub = leaderboard.publish(board_suite, plan.store, PROJECT_ROOT / "leaderboards", options=options)
            print(f"[leaderboard] published {pub}")


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
    return Options(baseline=str(lb.get("baseline", "random")), alpha=float(alpha),
                   bayesian=bool(lb.get("bayesian", False)), margins={k: float(v) for k, v in margins.items()})


def leaderboard_suite(suite: Suite, version: Any, stage: str) -> Suite:
    """The suite as the leaderboard renders it: its current version, or ``suite_version=K`` for the record of an
    earlier one (only with stage=leaderboard: cells are always run on the current data)."""
    if version is None:
        return suite
    if stage != "leaderboard":
        raise UserError(f"suite_version={version} applies only to stage=leaderboard: runs always use the current "
                        f"data (suite {suite.name!r} v{suite.version})")
    try:
        v = int(version)
    except (TypeError, ValueError):
        v = None
    if v is None or isinstance(version, (bool, float)) or not 1 <= v <= suite.version:
        raise UserError(f"suite_version={version!r}: suite {suite.name!r} has versions 1 to {suite.version}")
    return replace(suite, version=v)
