"""Stages of a run: validate -> pretrain -> transfer (cells) -> leaderboard.

It executes a :class:`bench.plan.Plan` (resolved and checked from the config by :mod:`bench.plan`), building
everything from the registries by name; it knows no method, dataset or suite by name.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bench import distributed, jobs, leakage
from bench.backbones import build_backbone
from bench.data import PretrainDataset, Preprocess, PreprocessedCache, compact_label, match_channels
from bench.engine import earlier_wall, fit, schedule_config, seed_everything
from bench.export import load_meta, save_export
from bench.plan import (
    Plan,
    UserError,
    cell_id,
    cell_key,
    config_hash,
    leaderboard_options,
    leaderboard_suite,
    make_plan,
    pipeline_plans,
    protocol_config,
)
from bench.protocols.base import Protocol, TransferContext, resolve_protocol
from bench.provenance import LEADERBOARDS, git_sha
from bench.registry import DATASETS, METHODS
from bench.results import check_rows
from bench.suites import Cell, expand
from bench.types import (
    DataError,
    corpus_label_map,
    default_data_dir,
    load_split_file,
    write_text_atomic,
)

__all__ = ["UserError", "make_plan", "run"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def dataset(plan: Plan, name: str):
    return DATASETS.get(name)(root=plan.data_root, cache_dir=plan.cache_dir)


def prepared(plan: Plan, name: str):
    """The dataset, generated or indexed once: under torchrun by the main process first, then read by the others."""
    ds = dataset(plan, name)
    with distributed.main_first():
        ds.prepare(progress=plan.progress and distributed.is_main())
    return ds


def say(msg: str) -> None:
    """A stage's message, once per job (from the main process)."""
    if distributed.is_main():
        print(msg, flush=True)  # a job's log (SLURM, joblib) shows it when it happens


def split_hash(dataset_name: str) -> str:
    """Hash of the committed split file a dataset reads (several datasets may share one)."""
    cls = DATASETS.get(dataset_name)
    return config_hash(load_split_file(getattr(cls, "split_name", None) or dataset_name))


def suite_preprocess(plan: Plan) -> Preprocess:
    pp = dict(plan.preprocessing if plan.preprocessing is not None else plan.suite.preprocessing)
    if plan.spatial_dims == 2:
        pp.setdefault("size", tuple(plan.roi))  # 2D images are fed whole, at the budget's input size
    return Preprocess.from_config(pp)


def corpus_preprocess(plan: Plan) -> Preprocess:
    """The pretraining corpus's preprocessing: the suite's, as the method's ``corpus_preprocessing`` adjusts it
    (its official loader's own window); transfer keeps the suite's."""
    cls = METHODS.get(plan.method)
    modality = DATASETS.get(plan.suite.pretrain_dataset).info.modality
    try:
        pp = cls.corpus_preprocessing(cls.make_config(plan.method_cfg), asdict(suite_preprocess(plan)), modality)
        return Preprocess.from_config(pp)
    except (TypeError, ValueError) as e:
        raise UserError(f"method {plan.method}, corpus {plan.suite.pretrain_dataset}: {e}") from None


def method_identity(plan: Plan) -> dict[str, Any]:
    """What the method itself says decides its export beyond its options (e.g. a checkpoint's sha256)."""
    cls = METHODS.get(plan.method)
    try:
        return cls.cache_identity(cls.make_config(plan.method_cfg))
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def pretrain_identity(plan: Plan) -> dict[str, Any]:
    return {
        "method": plan.method,
        "method_cfg": plan.method_cfg,
        "train": plan.method_train,
        "backbone": plan.backbone,
        "backbone_kwargs": plan.backbone_kwargs,
        "roi": plan.roi,
        "steps": plan.pretrain_steps,
        "batch": plan.pretrain_batch,
        "corpus": plan.suite.pretrain_dataset,
        "corpus_splits": plan.suite.pretrain_splits,
        "corpus_split_hash": split_hash(plan.suite.pretrain_dataset),
        "preprocess": asdict(corpus_preprocess(plan)),
        "seed": plan.pretrain_seed,
        # a suite's version goes up when its data change (abdomen v2: the orientation fix), and an encoder
        # pretrained on the old corpus must not be reused; version 1 adds no key, so older caches stay valid
        **({"suite_version": plan.suite.corpus_version} if plan.suite.corpus_version != 1 else {}),
        **({"method_identity": mi} if (mi := method_identity(plan)) else {}),
        # the corpus's per-volume labels change the objective of a method that uses them (saca's auto target);
        # no key otherwise, so every other cached export keeps its hash
        **({"volume_labels": True} if uses_volume_labels(plan) else {}),
    }


def uses_volume_labels(plan: Plan) -> bool:
    """Whether the method uses a per-volume label (``wants_volume_labels``) and the corpus has one
    (``has_volume_labels``): then it is told so and each of its samples carries ``volume_label``."""
    return bool(getattr(METHODS.get(plan.method), "wants_volume_labels", False)) and bool(
        getattr(DATASETS.get(plan.suite.pretrain_dataset), "has_volume_labels", False)
    )


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
        ds = prepared(plan, plan.suite.pretrain_dataset)
        cache = hash_cache(plan)
        hashes = set(leakage.split_hashes(ds, plan.suite.pretrain_splits, cache))
        cache.save()
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(sorted(hashes)))
    return hashes


def corpus_problems(plan: Plan) -> list[str]:
    """The pretraining corpus's files checked as a task's are (values, shapes, spacing): a NaN voxel in the corpus
    would otherwise reach the loss (about 4 s for abdomen's 200 corpus volumes on 2 cores)."""
    return list(prepared(plan, plan.suite.pretrain_dataset).validate(tuple(plan.suite.pretrain_splits)))


def check_leakage(plan: Plan, corpus: set[str], tasks, memo: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Per task, the val/test records whose content is in the pretraining corpus; an error unless allowed."""
    found: dict[str, list[str]] = {}
    cache = hash_cache(plan)
    for task in tasks:
        # the task's own evaluation split too (e.g. BTCV's liu_test): val/test alone would miss a task scored there
        key = f"{task.dataset}/{task.split}"
        if key not in memo:
            ds = prepared(plan, task.dataset)
            declared = load_split_file(getattr(ds, "split_name", None) or task.dataset)
            splits = [s for s in dict.fromkeys(("val", "test", task.split)) if s in declared]
            memo[key] = leakage.split_hashes(ds, splits, cache)
        hit = leakage.leaks(corpus, memo[key])
        if hit:
            found[task.name] = hit
    cache.save()
    if found and not plan.allow_leakage:
        detail = "; ".join(
            f"task {t}: {len(ids)} case(s) ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
            for t, ids in found.items()
        )
        corpus_name = f"{plan.suite.pretrain_dataset} {list(plan.suite.pretrain_splits)}"
        raise UserError(
            f"leakage: the pretraining corpus {corpus_name} "
            f"contains evaluation cases by content: {detail}. Remove them from the corpus, or pass "
            f"allow_leakage=true to run anyway (recorded with the results and marked on the leaderboard)"
        )
    return found


def pretrain_dir(plan: Plan, h: str) -> Path:
    """The run folder of the pretraining with config hash ``h``: its export, checkpoint and files."""
    return plan.runs_dir / "pretrain" / plan.method / h


EXPORT = "export.pt"


def pretrain(plan: Plan, ident: dict[str, Any] | None = None) -> tuple[Path, str]:
    """Pretrain once per (method, corpus, budget, pretraining seed); return the encoder export path and its hash
    (the seed is part of the pretraining identity, so each pretraining seed has its own export and run directory).
    ``ident``: the plan's :func:`pretrain_identity` where the caller has it (an external checkpoint's identity
    hashes the whole file)."""
    ident = pretrain_identity(plan) if ident is None else ident
    h = config_hash(ident)
    run_dir = pretrain_dir(plan, h)
    export = run_dir / EXPORT
    if not export.is_file():
        seed_everything(plan.pretrain_seed)
        method_cls = METHODS.get(plan.method)
        backbone = build_backbone(plan.backbone, **plan.backbone_kwargs)
        try:
            method = method_cls(backbone, method_cls.make_config(plan.method_cfg))
            if method.needs_corpus_labels:  # its head, before its parameter groups and any resumed checkpoint
                method.bind_labels(corpus_label_map(DATASETS.get(plan.suite.pretrain_dataset)))
            # its objective: a corpus without volume labels is an error only for a method that cannot do without
            objective = method.bind_volume_labels(uses_volume_labels(plan)) if method.wants_volume_labels else {}
            # a method that does not pretrain (an external checkpoint) fails here, before any folder is made
            encoder = None if method.pretrains else method.export_encoder()
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from None
        if method.pretrains:  # the corpus it will read, checked before its run folder is made
            problems = corpus_problems(plan)
            if problems:
                raise UserError(f"{len(problems)} problem(s) in the pretraining corpus: " + " | ".join(problems))
        # one job pretrains, others needing the same export wait for it (or take over from a dead holder)
        with jobs.exclusive(run_dir, f"pretraining {plan.method} {h}", say):
            if not export.is_file():
                _pretrain(plan, ident, h, run_dir, export, method, encoder, objective)
                return export, h
    say(f"[pretrain] {plan.method}: cached export {export}")
    check_leakage(plan, corpus_hashes(plan, run_dir, method_cls_pretrains(plan)), plan.suite.tasks, {})
    return export, h


def _pretrain(
    plan: Plan,
    ident: dict[str, Any],
    h: str,
    run_dir: Path,
    export: Path,
    method: Any,
    encoder: Any,
    objective: dict[str, Any] | None = None,
) -> None:
    """Pretrain ``method`` (built and seeded by the caller) and write its export; ``objective`` is what the method
    settled from the corpus (``bind_volume_labels``), recorded in the export's metadata."""
    main = distributed.is_main()  # the one process that writes; the others train alongside it
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_text_atomic(run_dir / "config.json", json.dumps(ident, indent=1, default=str))
    meta = {
        "method": plan.method,
        "config_hash": h,
        "git_sha": git_sha(),
        "corpus": plan.suite.pretrain_dataset,
        "device": device_name(plan.device),
        "device_type": plan.device.type,
        "world_size": distributed.world().size,
        "corpus_split_hash": ident["corpus_split_hash"],
        "preprocess": ident["preprocess"],
        **({"method_identity": ident["method_identity"]} if "method_identity" in ident else {}),
        **({"objective": objective} if objective else {}),
    }
    if objective:
        say(f"[pretrain] {plan.method}: " + ", ".join(f"{k}={v}" for k, v in objective.items()))
    if encoder is not None:
        corpus_hashes(plan, run_dir, False)
        if main:
            save_export(encoder, export, meta | {"pretrain_steps": 0}, extras=method.export_extras())
        distributed.barrier()  # the export exists before any process reads it
        return
    volumes, hashes, labels = load_corpus(plan, method.backbone.in_channels, method.needs_corpus_labels)
    # fail before hours of pretraining, not after
    check_leakage(plan, hashes, plan.suite.tasks, {})
    if main:
        write_text_atomic(run_dir / CORPUS_HASHES, json.dumps(sorted(hashes)))
    volume_labels = corpus_volume_labels(plan, len(volumes)) if uses_volume_labels(plan) else None
    res = train_method(plan, method, volumes, run_dir, labels, volume_labels)
    if main:
        save_export(
            method.export_encoder(),
            export,
            meta | {"pretrain_steps": res.steps, "wall_s": res.wall_s, "final_loss": res.last_loss},
            extras=method.export_extras(),
        )
        (run_dir / "last.ckpt").unlink(missing_ok=True)  # the export is the product; keep the disk small
    distributed.barrier()


def load_corpus(
    plan: Plan, in_channels: int, with_labels: bool = False
) -> tuple[list[Any], set[str], list[Any] | None]:
    """The pretraining corpus, preprocessed (from the disk cache where it can be), its content hashes, and, for a
    method that pretrains with labels (``with_labels``), each volume's label map (else None). Under torchrun the
    main process fills the caches first and the others read them."""
    with distributed.main_first():
        return _load_corpus(plan, in_channels, with_labels)


def _load_corpus(plan: Plan, in_channels: int, with_labels: bool) -> tuple[list[Any], set[str], list[Any] | None]:
    ds = dataset(plan, plan.suite.pretrain_dataset)  # not prepared(): this already runs main process first
    show = plan.progress and distributed.is_main()
    ds.prepare(progress=show)
    pp = corpus_preprocess(plan)
    volumes, hashes, cache, disk = [], set(), hash_cache(plan), preprocessed_cache(plan)
    labels: list[Any] | None = [] if with_labels else None
    records = [rec for split in plan.suite.pretrain_splits for rec in corpus_records(plan, ds, split, with_labels)]
    from tqdm.auto import tqdm

    for rec in tqdm(records, desc=f"load {plan.suite.pretrain_dataset}", disable=not show, unit="vol"):
        # one read serves both the content hash and the preprocessing when either is not cached yet
        entry = disk.entry(ds.registry_name, rec, pp)
        cached = entry is not None and (entry / "meta.json").is_file() and cache.known(rec)
        raw = None if cached else ds.load(rec)
        hashes.add(cache.record_hash(ds, rec, None if raw is None else raw["image"]))
        sample = disk.get(ds, rec, pp, raw)  # the label too: transfer cells share the entry
        try:
            volumes.append(match_channels(sample["image"], in_channels, f"{plan.suite.pretrain_dataset}/{rec.id}"))
        except ValueError as e:
            raise UserError(str(e)) from None
        if labels is not None:
            if sample.get("label") is None:
                raise UserError(
                    f"{plan.suite.pretrain_dataset}/{rec.id}: no label map, and method {plan.method} "
                    f"pretrains with labels"
                )
            labels.append(compact_label(sample["label"]))
    cache.save()
    if not volumes:
        raise UserError(f"pretraining corpus {plan.suite.pretrain_dataset} {plan.suite.pretrain_splits} is empty")
    return volumes, hashes, labels


def corpus_records(plan: Plan, ds: Any, split: str, with_labels: bool) -> list[Any]:
    """A pretraining split's records; with their label maps for a method that pretrains with labels (the dataset's
    ``corpus_with_labels``, which may generate them first)."""
    if not with_labels:
        return ds.records(split)
    try:
        return ds.corpus_with_labels(split, progress=plan.progress and distributed.is_main())
    except DataError as e:
        raise UserError(f"method {plan.method}: {e}") from None


def corpus_volume_labels(plan: Plan, n_volumes: int) -> list[int]:
    """Each corpus volume's label (``volume_labels``), in the order ``load_corpus`` reads the volumes."""
    ds = dataset(plan, plan.suite.pretrain_dataset)
    out: list[int] = []
    for split in plan.suite.pretrain_splits:
        try:
            labels = ds.volume_labels(split)
        except DataError as e:
            raise UserError(f"method {plan.method}: {e}") from None
        for rec in ds.records(split):
            if labels.get(rec.id) not in (0, 1):
                raise UserError(
                    f"{plan.suite.pretrain_dataset}/{rec.id}: volume label {labels.get(rec.id)!r}, expected 0 "
                    f"(patient) or 1 (healthy)"
                )
            out.append(int(labels[rec.id]))
    if len(out) != n_volumes:
        raise UserError(f"{plan.suite.pretrain_dataset}: {len(out)} volume labels for {n_volumes} volumes")
    return out


def train_method(
    plan: Plan,
    method: Any,
    volumes: list[Any],
    run_dir: Path,
    labels: list[Any] | None = None,
    volume_labels: list[int] | None = None,
) -> Any:
    """The engine's one loop over the method's views of the corpus (with their label maps for a method that
    pretrains with labels, their volume labels for one that uses them), on the method's optimiser recipe."""
    # the budget's batch is the global batch: under torchrun each process draws its shard of it
    loader = distributed.loader(
        PretrainDataset(
            volumes,
            plan.roi,
            method.views,
            samples=max(plan.pretrain_batch * 50, 1),
            seed=plan.pretrain_seed,
            labels=labels,
            volume_labels=volume_labels,
        ),
        plan.pretrain_batch,
        "budget.pretrain.batch_size",
        num_workers=plan.num_workers,
        pin_memory=plan.device.type == "cuda",
        persistent_workers=plan.num_workers > 0,
    )
    try:
        tcfg = schedule_config(
            plan.method_train,
            plan.pretrain_steps,
            plan.pretrain_batch,
            checkpoint_every=max(1, min(50, plan.pretrain_steps // 4)),
            log_every=max(1, min(10, plan.pretrain_steps // 10)),
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"method {plan.method} train options: {e}") from None
    try:
        # a schedule in corpus epochs (ASA's phase blocks) needs the corpus size and volumes per optimizer step
        method.bind_corpus(len(volumes), plan.pretrain_batch * tcfg.accumulate)
    except ValueError as e:
        raise UserError(f"method {plan.method}: {e}") from None
    return fit(
        method,
        method.training_step,
        method.param_groups(tcfg.weight_decay, tcfg.no_decay),
        loader,
        tcfg,
        run_dir,
        device=plan.device,
        ema_pairs=method.ema_pairs(),
        ema_momentum=method.ema_momentum,
        after_step=method.after_optimizer_step,
        desc=f"pretrain {plan.method}",
        log_prefix=f"pretrain/{plan.method}",
        progress=plan.progress,
    )


def method_cls_pretrains(plan: Plan) -> bool:
    return bool(getattr(METHODS.get(plan.method), "pretrains", True))


def transfer_cells(plan: Plan, quiet: bool = False) -> list[Cell]:
    """The plan's cells, less those of protocols that ignore the label fraction below the task's largest one, and
    less the repeats of a deterministic protocol (kNN): given one encoder its result is the same for every transfer
    seed, so it runs at the first of the plan's seeds only (per label fraction and draw), and says so (unless
    ``quiet``)."""
    cells: list[Cell] = []
    repeats: dict[str, set[int]] = {}
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
            raise UserError(
                f"protocol={cell.protocol} picks its own labelled examples and runs at label_fraction="
                f"{max(cell.task.label_fractions):g} only (task {cell.task.name!r}); drop label_fraction="
                f"{plan.label_fraction:g}"
            )
    for protocol, seeds in ({} if quiet else repeats).items():
        rest = ", ".join(map(str, sorted(seeds)))
        say(
            f"[transfer] {protocol} is deterministic given the encoder: seeds {plan.seeds[0]}, {rest} are one run, "
            f"run once at seed {plan.seeds[0]} (pretraining seed {plan.pretrain_seed}); seeds {rest} are not run "
            f"again"
        )
    return cells


def deterministic_repeat(plan: Plan, cell: Cell, ident: dict[str, Any], proto_cls: type[Protocol]) -> str | None:
    """For a deterministic protocol, the id of a complete cell that is this one at another transfer seed (same
    encoder, options and data; e.g. an earlier job of ``-m seed=0,1,2``), else None."""
    if not proto_cls.deterministic:
        return None
    for seed in sorted((set(plan.suite.seeds) | set(plan.seeds)) - {cell.seed}):
        other = replace(cell, seed=seed)
        if plan.store.is_complete(cell_id(plan, other), config_hash(ident | {"seed": seed})):
            return cell_id(plan, other)
    return None


def cells_all_complete(plan: Plan, pretrain_hash: str) -> bool:
    """Whether the store holds every cell of the plan complete (or, for a deterministic protocol, its run at another
    transfer seed) under the config the plan would run now. Computed without the export: a cell's config hash
    takes the pretraining's hash, not its weights, so a pipeline whose export was deleted (to free the disk, or on
    another machine writing to the same store) need not pretrain again only to skip every cell. ``pretrain_hash``:
    the config hash of the plan's :func:`pretrain_identity`."""
    for cell in transfer_cells(plan, quiet=True):
        proto_cls, _, ident, ch, cid = cell_config(plan, cell, pretrain_hash)
        if not plan.store.is_complete(cid, ch) and deterministic_repeat(plan, cell, ident, proto_cls) is None:
            return False
    return True


def pretrain_compute(meta: dict[str, Any]) -> dict[str, Any]:
    """The pretraining's compute for a cell's row, from its export's metadata. None throughout when the harness
    ran no pretraining (random init, an imported checkpoint); hours None when the export predates the recording
    of its device (wall time only)."""
    if not meta.get("pretrain_steps") or meta.get("wall_s") is None:
        return {
            "pretrain_device": None,
            "pretrain_wall_s": None,
            "pretrain_gpu_hours": None,
            "pretrain_cpu_hours": None,
            "pretrain_world_size": None,
        }
    wall, kind = float(meta["wall_s"]), meta.get("device_type")
    procs = int(meta.get("world_size", 1))  # an export from before data parallelism ran on one process
    hours = wall * procs / 3600  # device-hours: every process held its device for the whole wall time
    return {
        "pretrain_device": meta.get("device"),
        "pretrain_wall_s": wall,
        "pretrain_gpu_hours": None if kind is None else (hours if kind == "cuda" else 0.0),
        "pretrain_cpu_hours": None if kind is None else (0.0 if kind == "cuda" else hours),
        "pretrain_world_size": procs,
    }


def transfer(plan: Plan, export: Path, pretrain_hash: str) -> list[dict[str, Any]]:
    """Run every cell of the plan on the exported encoder, skipping complete ones; return the new rows."""
    cells = transfer_cells(plan)
    pretrain_meta = load_meta(export)
    pretrain_cost = pretrain_compute(pretrain_meta)
    # what the method settled from its corpus (saca: "symmetry_target=label"), in each cell's metrics.json
    settled = pretrain_meta.get("objective") or {}
    objective = {"pretrain_objective": ", ".join(f"{k}={v}" for k, v in settled.items())} if settled else {}
    done: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    corpus = corpus_hashes(plan, export.parent, method_cls_pretrains(plan))
    eval_hashes: dict[str, dict[str, str]] = {}
    for cell in cells:
        proto_cls, pcfg, ident, h, cid = cell_config(plan, cell, pretrain_hash)
        leaked = check_leakage(plan, corpus, [cell.task], eval_hashes)
        if plan.store.is_complete(cid, h):
            say(f"[transfer] skip {cid}: complete with config {h}")
            continue
        same = deterministic_repeat(plan, cell, ident, proto_cls)
        if same is not None:
            say(
                f"[transfer] skip {cid}: {cell.protocol} is deterministic given the encoder; it is the run stored "
                f"as {same}"
            )
            continue
        run_dir = (
            plan.runs_dir
            / "cells"
            / plan.suite.name
            / plan.method
            / plan.budget
            / cell_key(cell, plan.pretrain_seed).replace("/", "_")
            / h
        )
        # one job runs a cell; another one that wants it waits, then finds it complete
        with jobs.exclusive(run_dir, f"cell {cid}", say):
            if plan.store.is_complete(cid, h):
                say(f"[transfer] skip {cid}: completed by another job")
                continue
            with attempt(plan, cid, h):
                row, result = run_cell(plan, cell, proto_cls(pcfg), ident, run_dir, export, cache)
                row |= {
                    "cell_id": cid,
                    "config_hash": h,
                    "pretrain_hash": pretrain_hash,
                    "leakage_override": int(bool(leaked)),
                    **pretrain_cost,
                    **objective,
                }
                if distributed.is_main():
                    store_cell(plan, row, result, run_dir)
            distributed.barrier()  # every process sees the cell complete before it looks at the next
        done.append(row)
    return done


@contextmanager
def attempt(plan: Plan, cid: str, h: str) -> Iterator[None]:
    """A cell's run, marked as running in the store (host, pid, SLURM job), and as failed, with its error's first
    line, when it raises: a sweep's status shows what runs where and what failed. Storing the complete cell clears
    the mark."""
    main = distributed.is_main()
    if main:
        me = jobs.whoami()
        plan.store.start_attempt(cid, h, me["host"], me["pid"], me["job_id"])
    try:
        yield
    except BaseException as e:  # KeyboardInterrupt too: a stopped cell is not left "running"
        if main:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            plan.store.fail_attempt(cid, f"{type(e).__name__}: {first}"[:500])
        raise


def cell_config(plan: Plan, cell: Cell, pretrain_hash: str) -> tuple[type[Protocol], Any, dict[str, Any], str, str]:
    """A cell's protocol class and options, its identity, config hash and id: what running it and reporting its
    status both look it up by. The pretraining seed enters through ``pretrain_hash`` (its identity holds the seed),
    so the config hash of a cell at pretraining seed 0 is what it was before the seed was part of a cell's
    identity."""
    options = cell.task.protocol_options.get(cell.protocol)
    proto_cls, pcfg = protocol_config(plan, cell.protocol, cell.task.kind, options)
    ident = cell_identity(plan, cell, pcfg, pretrain_hash)
    return proto_cls, pcfg, ident, config_hash(ident), cell_id(plan, cell)


def cell_identity(plan: Plan, cell: Cell, pcfg: Any, pretrain_hash: str) -> dict[str, Any]:
    """What decides a cell's result: its hash is the cell's config hash (a changed option reruns the cell)."""
    return {
        "pretrain": pretrain_hash,
        "protocol": cell.protocol,
        "protocol_cfg": asdict(pcfg),
        "task": cell.task.name,
        "fraction": cell.label_fraction,
        "draw": cell.draw,
        "seed": cell.seed,
        "steps": plan.transfer_steps,
        "batch": plan.transfer_batch,
        "roi": plan.roi,
        "split": split_hash(cell.task.dataset),
        "preprocess": asdict(suite_preprocess(plan)),
        **({"evaluations": plan.transfer_evaluations} if plan.transfer_evaluations else {}),
    }


def run_cell(
    plan: Plan, cell: Cell, protocol: Any, ident: dict[str, Any], run_dir: Path, export: Path, cache: dict[str, Any]
) -> tuple[dict[str, Any], Any]:
    """One transfer run in its own directory; returns the cell's row (less its ids) and the protocol's result."""
    ds = prepared(plan, cell.task.dataset)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        write_text_atomic(run_dir / "config.yaml", plan.config_yaml)
        write_text_atomic(run_dir / "cell.json", json.dumps(ident, indent=1, default=str))
    seed_everything(cell.seed)
    if plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(plan.device)
    start = dt.datetime.now(dt.UTC)
    t0 = time.time()
    ctx = TransferContext(
        export_path=export,
        dataset=ds,
        cell=cell,
        run_dir=run_dir,
        device=plan.device,
        preprocess=suite_preprocess(plan),
        roi=plan.roi,
        steps=plan.transfer_steps,
        batch_size=plan.transfer_batch,
        num_workers=plan.num_workers,
        progress=plan.progress,
        cache=cache,
        disk_cache=preprocessed_cache(plan),
        evaluations=plan.transfer_evaluations,
    )
    try:
        with earlier_wall() as earlier:
            result = protocol.run(ctx)
    except ValueError as e:  # a protocol's complaint about the data or its options, e.g. an empty split
        raise UserError(f"{cell_id(plan, cell)}: {e}") from None
    wall = time.time() - t0 + sum(earlier)
    on_gpu = plan.device.type == "cuda"
    procs = distributed.world().size
    hours = wall * procs / 3600  # device-hours: every process held its device for the whole wall time
    peak = torch.cuda.max_memory_allocated(plan.device) / 2**20 if on_gpu else None
    row = {
        "suite": plan.suite.name,
        "suite_version": plan.suite.version,
        "task": cell.task.name,
        "method": plan.method,
        "protocol": cell.protocol,
        "label_fraction": cell.label_fraction,
        "draw": cell.draw,
        "pretrain_seed": plan.pretrain_seed,
        "seed": cell.seed,
        "budget": plan.budget,
        "git_sha": git_sha(),
        "split_hash": ident["split"],
        "start_time": start.isoformat(),
        "end_time": dt.datetime.now(dt.UTC).isoformat(),
        "device": device_name(plan.device),
        "wall_s": wall,
        "gpu_hours": hours if on_gpu else 0.0,
        "cpu_hours": 0.0 if on_gpu else hours,
        "world_size": procs,
        "per_device_batch": plan.transfer_batch // procs,
        "peak_memory_mb": peak,
        "params": result.params,
        "run_dir": str(run_dir),
    }
    return row, result


def store_cell(plan: Plan, row: dict[str, Any], result: Any, run_dir: Path) -> None:
    """Run directory first, then the store: a row in the store always has its files."""
    import pandas as pd

    # a NaN voxel or a diverged model gives a NaN metric: the cell failed, and nothing of it is kept as a result
    check_rows(result.rows, f"cell {row['cell_id']}")
    check_rows(
        [{"case": "(summary)", "class": "all", "metric": k, "value": v} for k, v in result.summary.items()],
        f"cell {row['cell_id']}",
    )
    write_text_atomic(run_dir / "metrics.json", json.dumps({"summary": result.summary, "cell": row}, indent=1))
    write_text_atomic(run_dir / "per_case.csv", pd.DataFrame(result.rows).to_csv(index=False))
    plan.store.write_cell(row, result.rows)
    say(f"[transfer] {row['cell_id']}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.summary.items()))


def run(cfg: DictConfig) -> None:
    plan = make_plan(cfg)
    stage = cfg.stage
    if stage not in ("all", "validate", "pretrain", "transfer", "leaderboard", "status"):
        raise UserError(f"unknown stage {stage!r}; known: all, validate, pretrain, transfer, leaderboard, status")
    if stage == "status":
        from bench import status

        say(status.report(plan))
        return
    board_suite = leaderboard_suite(plan.suite, cfg.get("suite_version"), stage)  # checked before any work
    options = leaderboard_options(cfg)
    if stage in ("all", "validate", "transfer"):
        names = {t.dataset for t in plan.suite.tasks if plan.task in (None, t.name)}
        problems = []
        for name in sorted(names):
            ds = prepared(plan, name)
            problems += ds.validate()
        if stage == "validate":  # the pretraining corpus too; a run checks it only when it pretrains
            problems = list(dict.fromkeys(problems + corpus_problems(plan)))  # a file in both is said once
        if problems:
            raise UserError(f"{len(problems)} data problem(s): " + " | ".join(problems))
        if stage == "validate":
            corpus = f" and the corpus {plan.suite.pretrain_dataset} {list(plan.suite.pretrain_splits)}"
            say(f"[validate] {plan.suite.name}: all files of {', '.join(sorted(names))}{corpus} passed")
            return
    if stage in ("all", "pretrain", "transfer"):
        # one pretraining per pipeline run: the plan's, or with pretrain_seed=tied one per transfer seed
        for pipeline in pipeline_plans(plan):
            if plan.tied_pretrain_seed:
                say(f"[pipeline] pretraining seed {pipeline.pretrain_seed}, transfer seed {pipeline.seeds[0]}")
            ident = pretrain_identity(pipeline)
            ph = config_hash(ident)
            run_dir = pretrain_dir(pipeline, ph)
            if stage in ("all", "transfer") and not (run_dir / EXPORT).is_file() and cells_all_complete(pipeline, ph):
                say(
                    f"[pipeline] pretraining seed {pipeline.pretrain_seed}: no export at {run_dir}, but every "
                    "cell it would run is complete in the store; not pretrained again"
                )
                continue
            export, h = pretrain(pipeline, ident)
            if stage in ("all", "transfer"):
                transfer(pipeline, export, h)
    if stage in ("all", "transfer", "leaderboard") and distributed.is_main():
        from bench import leaderboard

        # one analysis per run (its bootstraps are the slow part): the published board, else the working copy
        if cfg.publish:
            pub = leaderboard.publish(board_suite, plan.store, LEADERBOARDS, options=options)
            print(f"[leaderboard] published {pub}")
        else:
            path = leaderboard.write(board_suite, plan.store, plan.runs_dir / "leaderboards", options=options)
            print(f"[leaderboard] {path}")
