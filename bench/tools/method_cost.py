"""Step cost of the 3D pretraining methods: forward + backward + optimizer step (+ teacher EMA) per method.

    python -m bench.tools.method_cost                                   # every method tagged "3d", quick geometry
    python -m bench.tools.method_cost --methods asa --set asa.phase_steps=1 --warmup 1 --steps 4   # both ASA phases
    python -m bench.tools.method_cost --corpus abdomen --steps 40 --out cost.json  # real volumes: + loss first/last

Each method runs in its own (spawned) process, so its peak RSS is its own: the method is built from its YAML
(``conf/method/<name>.yaml``: ``config`` and ``train``; ``--set METHOD.KEY=VALUE`` overrides one option), on the
budget's backbone, and trained by the engine's own step, ``bench.engine.train_step`` (the one ``fit`` loops):
lr schedule, ``zero_grad``, bf16 autocast on CUDA, ``training_step`` and ``backward`` per micro-batch (``accumulate``
of them), the NaN guard, clipping if configured, the optimizer step, the EMA of the declared teacher pairs and
``after_optimizer_step``. Only that is timed (``s/step``); the data side (``views``, which runs in loader workers
during training) is timed apart (``views s/batch``, all the micro-batches of a step). A step whose loss is not
finite is dropped and retried on new data, as in ``fit``.

Steps are grouped by the ``phase`` value a method logs (ASA); steps run until every group seen has ``--warmup +
--steps`` steps, and the first ``--warmup`` of each group are not timed (first-call allocations). The
learning-rate schedule and ``StepInfo.total_steps`` span ``--schedule-steps`` (default: the budget's pretraining
steps), so the steps run are the first steps of a real pretraining at that budget. With ``--corpus SUITE`` the
batches are views of the first ``--corpus-volumes`` volumes of the suite's pretraining corpus (preprocessed as
the runner does; with their label maps for a method that pretrains with labels), and the table adds the mean loss
of the first and last ``--loss-window`` steps of each group; without it, the volumes are uniform random noise (and
a method's label maps that noise cut into 14 classes, the abdomen corpus's count).

Defaults are the quick budget (conf/budget/quick.yaml): ``swin_unetr_tiny``, ROI 64^3, batch 2, 2 threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml

from bench.types import temp_sibling


def parse_sets(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` (VALUE parsed as YAML) -> {method: {key: value}}; a malformed item is an error."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not sep or not dot or not key:
            raise SystemExit(f"error: --set {item!r}: expected METHOD.KEY=VALUE, e.g. asa.phase_steps=1")
        if method not in methods:
            raise SystemExit(f"error: --set {item!r}: {method!r} is not one of the methods run ({', '.join(methods)})")
        out.setdefault(method, {})[key] = yaml.safe_load(value)
    return out


def corpus_samples(
    suite_name: str, n: int, data_dir: str | None, with_labels: bool
) -> tuple[list[np.ndarray], list[np.ndarray] | None, dict[int, str]]:
    """The first ``n`` volumes of a suite's pretraining corpus, preprocessed as the runner does, with their label
    maps for a method that pretrains with labels (else None), and the label map of the corpus's label maps."""
    import datasets  # noqa: F401  (registers the datasets and suites)
    from bench.data import Preprocess, compact_label, preprocess
    from bench.registry import DATASETS, SUITES
    from bench.types import corpus_label_map

    suite = SUITES.get(suite_name)
    ds = DATASETS.get(suite.pretrain_dataset)(root=None, cache_dir=data_dir)
    ds.prepare(progress=False)
    pp = Preprocess.from_config(suite.preprocessing)
    split_records = ds.corpus_with_labels if with_labels else ds.records
    records = [r for split in suite.pretrain_splits for r in split_records(split)][:n]
    samples = [preprocess(ds.load(r) | ({} if with_labels else {"label": None}), pp) for r in records]
    labels = [compact_label(s["label"]) for s in samples] if with_labels else None
    return [s["image"] for s in samples], labels, corpus_label_map(ds)


def run_method(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up and time one method (runs in a fresh process)."""
    import methods  # noqa: F401  (registers the methods)
    from bench.backbones import build_backbone
    from omegaconf import OmegaConf

    from bench.engine import build_optimizer, pick_device, schedule_config, to_device, train_step
    from bench.plan import compose
    from bench.registry import METHODS

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    torch.manual_seed(0)
    device = pick_device(opts["device"])
    cls = METHODS.get(name)
    # the options a run at the quick budget gets, composed by Hydra as run_bench.py composes them
    cfg = cast(
        dict[str, Any],
        OmegaConf.to_container(
            compose([f"method={name}", "budget=quick", f"backbone={opts['backbone']}", *opts["overrides"]]),
            resolve=True,
        ),
    )
    config = dict(cfg["method"].get("config") or {}) | opts["sets"].get(name, {})
    train = dict(cfg["method"].get("train") or {})
    backbone = build_backbone(cfg["backbone"]["name"], **(cfg["backbone"].get("kwargs") or {}))
    method = cls(backbone, cls.make_config(config))
    rng = np.random.default_rng(0)
    labels: list[np.ndarray] | None = None
    if opts["corpus"]:
        volumes, labels, label_map = corpus_samples(
            opts["corpus"], opts["corpus_volumes"], opts["data_dir"], method.needs_corpus_labels
        )
    else:
        volumes = [rng.random((1, *opts["volume"]), dtype=np.float32) for _ in range(max(opts["batch"], 2))]
        # a method that pretrains with labels: the noise cut into the abdomen corpus's 14 classes (BTCV)
        label_map = {k: f"class {k}" for k in range(14)}
        if method.needs_corpus_labels:
            labels = [np.minimum(v[0] * 14, 13).astype(np.uint8) for v in volumes]
    if method.needs_corpus_labels:
        method.bind_labels(label_map)  # its head, before its parameter groups
    method = method.to(device)
    total = opts["schedule_steps"]
    tcfg = schedule_config(train, total, opts["batch"])
    opt = build_optimizer(method.param_groups(tcfg.weight_decay, tcfg.no_decay), tcfg, device)
    base_lrs = [g["lr"] for g in opt.param_groups]
    pairs = method.ema_pairs()
    roi = tuple(opts["roi"])
    need = opts["warmup"] + opts["steps"]
    if need > total:
        raise SystemExit(f"error: --warmup + --steps = {need} exceeds --schedule-steps {total}")
    steps: list[dict[str, Any]] = []
    per_group: dict[Any, int] = {}
    method.train()
    step, bad_in_a_row = 0, 0
    # until every phase seen so far has `need` steps (one group for a method without phases)
    while step < total and (not per_group or min(per_group.values()) < need):
        t0 = time.perf_counter()
        batches = []
        for _ in range(tcfg.accumulate):  # the micro-batches of one optimizer step
            samples = []
            for _ in range(opts["batch"]):
                k = int(rng.integers(len(volumes)))
                sample = {"image": volumes[k], "roi": roi} | ({} if labels is None else {"label": labels[k]})
                samples.append(method.views(sample, rng))
            batches.append(to_device(torch.utils.data.default_collate(samples), device))
        t_views = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = train_step(
            method,
            method.training_step,
            iter(batches),
            opt,
            tcfg,
            step,
            device=device,
            base_lrs=base_lrs,
            ema_pairs=pairs,
            ema_momentum=method.ema_momentum,
            after_step=method.after_optimizer_step,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_step = time.perf_counter() - t0
        if not res.finite:  # the engine's NaN guard dropped the step: fit retries the same step on new data
            bad_in_a_row += 1
            print(f"  {name} step {step}: non-finite loss, step dropped", flush=True)
            if bad_in_a_row >= tcfg.max_bad_steps:
                raise RuntimeError(f"{bad_in_a_row} consecutive non-finite losses at step {step}")
            continue
        bad_in_a_row = 0
        phase = res.logs.get("phase")
        steps.append(
            {
                "step": step,
                "s": t_step,
                "views_s": t_views,
                "loss": res.loss,
                "phase": None if phase is None else int(phase),
            }
        )
        per_group[steps[-1]["phase"]] = per_group.get(steps[-1]["phase"], 0) + 1
        print(
            f"  {name} step {step}: {t_step:.2f} s, loss {steps[-1]['loss']:.4f}"
            + (f", phase {steps[-1]['phase']}" if phase is not None else ""),
            flush=True,
        )
        step += 1
    params = sum(p.numel() for p in method.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "method": name,
        "config": config,
        "steps": steps,
        "params": params,
        "trainable_params": trainable,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": peak_gpu,
        "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }


def _child(name: str, opts: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(run_method(name, opts))
    except BaseException as e:  # report, don't hang the parent
        queue.put({"method": name, "error": f"{type(e).__name__}: {e}"})


def summarise(result: dict[str, Any], warmup: int, window: int) -> list[dict[str, Any]]:
    """One row per (method, phase): median/min/max of the timed steps, first/last-window mean loss."""
    if "error" in result:
        return [{"method": result["method"], "phase": None, "error": result["error"]}]
    groups: dict[Any, list[dict[str, Any]]] = {}
    for s in result["steps"]:
        groups.setdefault(s["phase"], []).append(s)
    rows = []
    for phase, steps in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0])):
        timed = [s["s"] for s in steps[warmup:]]
        losses = [s["loss"] for s in steps]
        k = min(window, len(losses) // 2)
        rows.append(
            {
                "method": result["method"],
                "phase": phase,
                "n_timed": len(timed),
                "s_median": statistics.median(timed) if timed else None,
                "s_min": min(timed) if timed else None,
                "s_max": max(timed) if timed else None,
                "views_s": statistics.median(s["views_s"] for s in steps),
                "peak_rss_mb": result["peak_rss_mb"],
                "peak_gpu_mb": result["peak_gpu_mb"],
                "params_m": result["params"] / 1e6,
                "trainable_m": result["trainable_params"] / 1e6,
                "loss_first": statistics.fmean(losses[:k]) if k else None,
                "loss_last": statistics.fmean(losses[-k:]) if k else None,
                "loss_window": k,
                "n_steps": len(losses),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], with_loss: bool) -> str:
    head = ["method", "s/step median (min-max)", "views s/batch", "peak RSS MB", "params M (trainable / total)"]
    if any(r.get("peak_gpu_mb") for r in rows):
        head.insert(4, "peak GPU MB")
    if with_loss:
        head.append("loss first-k -> last-k (k)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = r["method"] + (f" (phase {r['phase']})" if r.get("phase") is not None else "")
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        t = "-" if r["s_median"] is None else f"{r['s_median']:.2f} ({r['s_min']:.2f}-{r['s_max']:.2f})"
        cells = [
            label,
            t,
            f"{r['views_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['trainable_m']:.1f} / {r['params_m']:.1f}",
        ]
        if "peak GPU MB" in head:
            cells.insert(4, "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}")
        if with_loss:
            cells.append(
                "-"
                if r["loss_first"] is None
                else f"{r['loss_first']:.4f} -> {r['loss_last']:.4f} ({r['loss_window']})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def atomic_write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    import methods  # noqa: F401
    from bench.registry import METHODS

    from omegaconf import OmegaConf

    from bench.plan import compose

    quick = compose(["budget=quick"]).budget
    budget = cast(dict[str, Any], OmegaConf.to_container(quick, resolve=True)) | {"backbone": quick.backbone.name}
    known = [m for m in METHODS.names(tag="3d") if METHODS.get(m).pretrains]
    ap = argparse.ArgumentParser(prog="python -m bench.tools.method_cost", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--methods",
        default=",".join(known),
        help=f"comma-separated; default: every 3D method that pretrains ({', '.join(known)})",
    )
    ap.add_argument("--backbone", default=budget["backbone"], help="conf/backbone/<name>.yaml (default: quick's)")
    ap.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="Hydra overrides of the composed config, e.g. backbone.kwargs.num_heads=[3,6,12,24]",
    )
    ap.add_argument("--roi", type=int, nargs="+", default=list(budget["roi"]), help="ROI side(s) (default: quick's)")
    ap.add_argument("--batch", type=int, default=int(budget["pretrain"]["batch_size"]))
    ap.add_argument("--steps", type=int, default=5, help="timed steps (per phase, for a method that logs one)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps of each phase group")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads; 0: torch's default")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override one method option (repeatable), e.g. asa.phase_steps=1",
    )
    ap.add_argument(
        "--schedule-steps",
        type=int,
        default=int(budget["pretrain"]["steps"]),
        help="length of the lr / EMA schedule the steps belong to (default: quick's pretraining steps)",
    )
    ap.add_argument("--corpus", default=None, help="a suite: use its pretraining corpus instead of random volumes")
    ap.add_argument("--corpus-volumes", type=int, default=16)
    ap.add_argument("--data-dir", default=None, help="generated-data cache (default: $SSLBENCH_DATA or ./data)")
    ap.add_argument("--loss-window", type=int, default=10)
    ap.add_argument("--volume", type=int, nargs=3, default=[96, 80, 72], help="random volume size (C=1)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in names:
        try:
            cls = METHODS.get(m)
        except Exception as e:  # unknown name: the registry's message names the known ones
            raise SystemExit(f"error: {e}") from None
        if not cls.pretrains or "3d" not in METHODS.tags(m):
            raise SystemExit(f"error: {m!r} is not a 3D pretraining method; choose from {', '.join(known)}")
    roi = args.roi * 3 if len(args.roi) == 1 else args.roi
    if len(roi) != 3 or any(r % 32 for r in roi):
        raise SystemExit(f"error: --roi {args.roi}: one or three sides, each a multiple of 32")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        raise SystemExit("error: --steps >= 1, --warmup >= 0 and --batch >= 1 are required")
    opts = {
        "backbone": args.backbone,
        "overrides": list(args.override),
        "roi": roi,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "device": args.device,
        "sets": parse_sets(args.sets, names),
        "schedule_steps": args.schedule_steps,
        "corpus": args.corpus,
        "corpus_volumes": args.corpus_volumes,
        "data_dir": args.data_dir,
        "volume": args.volume,
    }
    if args.corpus:  # generate the corpus (with labels, for a method that pretrains with them) before the timing
        corpus_samples(args.corpus, 1, args.data_dir, any(METHODS.get(m).needs_corpus_labels for m in names))
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    ctx = mp.get_context("spawn")
    results, rows = [], []
    for name in names:
        print(f"[method_cost] {name} ...", flush=True)
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, opts, queue))
        proc.start()
        res = None
        while res is None:
            try:
                res = queue.get(timeout=5)
            except Exception:
                if not proc.is_alive():
                    res = {"method": name, "error": f"process exited with code {proc.exitcode} (out of memory?)"}
        proc.join()
        results.append(res)
        rows += summarise(res, args.warmup, args.loss_window)
    finished = dt.datetime.now(dt.UTC)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    header = (
        f"{started:%Y-%m-%d %H:%M} UTC, {dev_name}, {args.threads or torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {' '.join([args.backbone, *args.override])}, ROI {'x'.join(map(str, roi))}, "
        f"batch {args.batch}, "
        f"{'corpus ' + args.corpus if args.corpus else 'random volumes'}; load average before "
        f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"wall {(finished - started).total_seconds():.0f} s, "
        f"CPU {sum(r.get('cpu_s', 0.0) for r in results):.0f} s"
    )
    print("\n" + header + "\n\n" + markdown(rows, bool(args.corpus)))
    if args.out:
        atomic_write_json(
            args.out,
            {
                "header": header,
                "argv": argv if argv is not None else sys.argv[1:],
                "options": opts,
                "rows": rows,
                "results": results,
                "started": started.isoformat(),
                "finished": finished.isoformat(),
            },
        )
        print(f"\n[method_cost] wrote {args.out}")


if __name__ == "__main__":
    main()
