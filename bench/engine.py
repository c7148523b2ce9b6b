"""The one training loop, used by pretraining and by every transfer protocol.

It owns the optimizer and warmup+cosine schedule (from config), bf16 autocast on CUDA, gradient
accumulation and clipping, the NaN guard, EMA of declared (student, teacher) pairs after each real
optimizer step, periodic checkpoints with resume on rerun, model selection on a validation score,
a progress bar, and TensorBoard + JSONL scalars. What varies between callers is only ``step_fn``.

Under ``torchrun`` (bench/distributed.py) the same loop runs data-parallel: the step runs through
DistributedDataParallel, every collective decision (the NaN guard) is taken on the sums over the processes, each
process keeps its own RNG stream, and only the main process writes checkpoints, scalars and the selected weights.

One optimizer step (schedule, autocast, accumulation, NaN guard, clipping, optimizer step, EMA) is
:func:`train_step`; :func:`fit` loops it and the cost tool (``bench.tools.method_cost``) times it, so the
step that is measured is the step that trains.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bench import distributed
from bench.options import check_types
from bench.types import StepInfo, StepOutput, naming_the_file, temp_sibling

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

CKPT = "last.ckpt"
BEST = "best.pt"


OPTIMIZERS = ("adamw", "sgd")
#: the weight-decay exemptions of a method that states none (``train.no_decay``; methods/base.py ``param_groups``)
DEFAULT_NO_DECAY: tuple[str, ...] = ("1d", "token", "tokens")


@dataclass
class TrainConfig:
    steps: int = 100
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 0
    accumulate: int = 1
    grad_clip: float | None = None
    amp: bool = True  # bf16 autocast, CUDA only
    checkpoint_every: int = 50
    log_every: int = 10
    eval_every: int = 0  # 0: no model selection
    max_bad_steps: int = 20  # consecutive non-finite losses before giving up
    fused: bool = True  # fused AdamW on CUDA
    compile: bool = False  # torch.compile the step function (CUDA; fuses the memory-bound ops)
    no_decay: tuple[str, ...] = DEFAULT_NO_DECAY  # parameters without weight decay: "1d" and/or name suffixes

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        d = dict(d)
        if isinstance(d.get("no_decay"), str):
            raise ValueError(f'no_decay must be a list of rules ("1d" or a name suffix); got {d["no_decay"]!r}')
        check_types(cls, d)
        if d.get("optimizer", "adamw") not in OPTIMIZERS:
            raise ValueError(f"optimizer={d['optimizer']!r}: known optimizers: {', '.join(OPTIMIZERS)}")
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "no_decay" in d:
            d["no_decay"] = tuple(d["no_decay"])
        return cls(**d)


def schedule_config(train: dict[str, Any], steps: int, batch: int, **fixed: Any) -> TrainConfig:
    """A method's ``train`` block for a run of ``steps`` optimizer steps on batches of ``batch``.

    ``warmup_fraction`` becomes warmup steps. ``lr_reference_batch: R`` makes ``lr`` a base rate for a batch of R
    (the linear scaling rule of DINO's and MAE's code: lr = base * batch * accumulate / R; ``min_lr`` stays
    absolute, as there), so a small budget's batch trains at the rate the recipe gives that batch.
    """
    train = dict(train)
    warm = float(train.pop("warmup_fraction", 0.0))
    ref = train.pop("lr_reference_batch", None)
    tcfg = TrainConfig.from_dict({"steps": steps, "warmup_steps": int(warm * steps), **fixed, **train})
    if ref is not None:
        if not float(ref) > 0:
            raise ValueError(f"lr_reference_batch must be a positive batch size, got {ref}")
        tcfg.lr = tcfg.lr * batch * tcfg.accumulate / float(ref)
    return tcfg


@dataclass
class FitResult:
    steps: int
    wall_s: float
    best_score: float | None = None
    last_loss: float | None = None
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    data_waits: list[float] = field(default_factory=list)  # per step: time blocked on the loader
    step_times: list[float] = field(default_factory=list)  # per step: wall time of the whole step


class NonFiniteLossError(RuntimeError):
    pass


_earlier_wall: ContextVar[list[float] | None] = ContextVar("earlier_wall", default=None)


@contextmanager
def earlier_wall() -> Iterator[list[float]]:
    """Collect, for every :func:`fit` in the block that resumes a checkpoint, the training time that earlier
    (interrupted) processes spent up to that checkpoint; a cell's recorded compute adds their sum to its own
    wall time, so that a resumed cell does not look nearly free."""
    acc: list[float] = []
    token = _earlier_wall.set(acc)
    try:
        yield acc
    finally:
        _earlier_wall.reset(token)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then half-cosine to min_lr (as a fraction of lr)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(
    param_groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    groups = [g for g in param_groups if g["params"]]
    if cfg.optimizer == "adamw":
        fused = cfg.fused and device.type == "cuda"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: adamw, sgd")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if not torch.cuda.is_available():
        # On the CPU, the backward of indexing with repeated indices (the Swin relative-position bias gather) adds in
        # an order that depends on the threads: two runs with one seed then differ in the last bits, and a killed
        # and resumed run cannot be checked against an uninterrupted one. The deterministic kernels cost nothing
        # measurable here (tests/test_engine.py); on CUDA the fast kernels are kept.
        torch.use_deterministic_algorithms(True, warn_only=True)


def _rng_state() -> dict[str, Any]:
    # plain lists and tensors only, so checkpoints load with weights_only=True
    state = np.random.get_state(legacy=True)  # legacy=True is the default: made explicit for the type checker
    if not isinstance(state, tuple):  # a dict only if np.random.set_bit_generator swapped out the Mersenne Twister
        raise TypeError(
            f"the global numpy generator is {state['bit_generator']}, not MT19937: its state cannot be checkpointed"
        )
    name, keys, pos, has_gauss, cached = state
    st = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = temp_sibling(path)
    try:
        with naming_the_file(path):
            torch.save(obj, tmp)
            os.replace(tmp, path)
    finally:  # a failed save (a full disk) leaves no partial temporary behind
        tmp.unlink(missing_ok=True)


def infinite(loader: Iterable) -> Iterator:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the data loader is empty")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@torch.no_grad()
def ema_update(pairs: list[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    for student, teacher in pairs:
        s_params = [p.detach() for p in student.parameters()]
        t_params: list[torch.Tensor] = list(teacher.parameters())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            tb.copy_(sb)


class ScalarLogger:
    """TensorBoard + JSONL scalars under the run directory; nothing on a process other than the main one (its
    scalars are already the global batch's, see :func:`train_step`)."""

    def __init__(self, run_dir: Path, prefix: str) -> None:
        self.prefix = prefix
        self.jsonl: Any = None
        self.tb: SummaryWriter | None = None
        if not distributed.is_main():
            return
        self.jsonl = open(run_dir / "scalars.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception as e:  # any failure to set it up: JSONL is still written, and the user is told why
            self.tb = None
            warnings.warn(
                f"TensorBoard logging is off for {run_dir} ({type(e).__name__}: {e}); the scalars are still in "
                f"{run_dir / 'scalars.jsonl'}",
                stacklevel=2,
            )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.jsonl is None:
            return
        row = {"step": step, **{f"{self.prefix}/{k}": v for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{self.prefix}/{k}", v, step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class StepResult:
    """What one :func:`train_step` did."""

    finite: bool  # False: a non-finite loss; gradients dropped, no optimizer step, no EMA
    loss: float | None = None  # mean over the micro-batches; None on a dropped step
    logs: dict[str, float] = field(default_factory=dict)  # the step's logs, mean over the micro-batches
    grad_norm: float | None = None  # total gradient norm before clipping (only when cfg.grad_clip is set)
    samples: int = 0  # samples of the micro-batches that were backpropagated, over all processes
    batches: int = 0  # micro-batches drawn from ``batches`` (a dropped step draws some too)
    data_wait: float = 0.0  # seconds blocked on ``batches``
    seconds: float = 0.0  # wall time from zero_grad to the optimizer step (EMA and after_step excluded)


class _Step(nn.Module):
    """The caller's step as a module's forward. DistributedDataParallel reduces gradients only for a forward that
    went through it, and methods call their submodules directly, so the step itself is what DDP wraps; the method
    never learns that it runs on several processes."""

    def __init__(self, model: nn.Module, step_fn: Callable[[Any, StepInfo], StepOutput]) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.step_fn(batch, info)
        return out.loss, dict(out.logs)  # DDP follows tensors through tuples and dicts, not through StepOutput


def data_parallel(
    model: nn.Module, step_fn: Callable[[Any, StepInfo], StepOutput], device: torch.device
) -> torch.nn.parallel.DistributedDataParallel | None:
    """``step_fn`` wrapped for DDP when this process is one of several, else None.

    ``find_unused_parameters``: a method may leave heads idle for a whole phase (ASA's phase 2 has no order head),
    which DDP must be told about; buffers (BatchNorm statistics, a teacher's copies) follow the main process's at
    every forward, so that every process's EMA teacher stays identical."""
    if not distributed.world().distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        _Step(model, step_fn),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _global_step_sums(
    loss: torch.Tensor, logs: dict[str, Any], n: int, device: torch.device
) -> tuple[bool, int, float, dict[str, float]]:
    """(finite on every process, samples, sample-weighted sums of the loss and logs) over the processes: one small
    all-reduce, so that the NaN guard decides alike everywhere and the logged loss is the global batch's."""
    finite = bool(torch.isfinite(loss.detach()))
    keys = sorted(logs)
    vals = [float(logs[k]) * n for k in keys] if finite else [0.0] * len(keys)
    sums = distributed.reduce_sum([float(finite), float(n), float(loss.detach()) * n if finite else 0.0, *vals], device)
    procs = distributed.world().size
    total = int(sums[1])
    return sums[0] == procs, total, sums[2], dict(zip(keys, sums[3:]))


def train_step(
    model: nn.Module,
    step_fn: Callable[[Any, StepInfo], StepOutput],
    batches: Iterator,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    step: int,
    *,
    device: torch.device,
    base_lrs: list[float],
    ema_pairs: list[tuple[nn.Module, nn.Module]] | None = None,
    ema_momentum: Callable[[float], float] | None = None,
    after_step: Callable[[StepInfo], None] | None = None,
    sync: bool = False,
    ddp: torch.nn.parallel.DistributedDataParallel | None = None,
) -> StepResult:
    """One optimizer step, the ``step``-th (0-based) of ``cfg.steps``, exactly as :func:`fit` takes it.

    The learning rate of each group is set to its ``base_lrs`` entry times :func:`lr_factor`; then, after
    ``zero_grad``, ``cfg.accumulate`` micro-batches are drawn from ``batches`` (moved to ``device``) and each is
    run through ``step_fn`` under bf16 autocast (CUDA, ``cfg.amp``) and backpropagated with its loss divided by
    ``cfg.accumulate``. NaN guard: at the first non-finite loss the step's gradients are dropped and the step
    ends (``finite=False``: no optimizer step, no EMA, no ``after_step``; the caller decides whether to go on and
    retries the same ``step``). Otherwise: gradient clipping to ``cfg.grad_clip`` if set, the optimizer step, the
    EMA of ``ema_pairs`` at momentum ``ema_momentum((step + 1) / cfg.steps)`` (0.996 without it), and
    ``after_step(StepInfo(step + 1, cfg.steps))``. With ``sync`` the GPU is synchronised after the optimizer
    step, so that ``seconds`` is exact (benchmarks only).

    With ``ddp`` (:func:`data_parallel`) the micro-batches run through it: the inner ones under ``no_sync`` (one
    all-reduce per optimizer step), a loss non-finite on any process drops the step on all, and a process whose
    shard is larger or smaller than the mean is weighted so that the gradient is the global batch's mean.

    :func:`fit` runs it in its loop, ``python -m bench.tools.method_cost`` times it per method.
    """
    info = StepInfo(step, cfg.steps)
    f = lr_factor(step, cfg)
    for g, lr0 in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr0 * f
    optimizer.zero_grad(set_to_none=True)
    use_amp = cfg.amp and device.type == "cuda"
    res = StepResult(finite=True)
    loss_sum = 0.0
    logs_sum: dict[str, float] = {}
    t_step = time.perf_counter()
    for i in range(cfg.accumulate):
        t_wait = time.perf_counter()
        batch = to_device(next(batches), device)
        res.batches += 1
        res.data_wait += time.perf_counter() - t_wait
        n = _batch_size(batch)
        inner: AbstractContextManager[Any] = (
            ddp.no_sync() if ddp is not None and i < cfg.accumulate - 1 else nullcontext()
        )
        with inner:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if ddp is None:
                    out = step_fn(batch, info)
                    loss, logs = out.loss, out.logs
                else:
                    loss, logs = ddp(batch, info)
            finite, total, loss_n, logs_n = _global_step_sums(loss, logs, n, device)
            if not finite:
                res.finite = False
                optimizer.zero_grad(set_to_none=True)
                return res
            weight = distributed.world().size * n / total  # 1 when the shards are equal
            ((loss * weight if weight != 1 else loss) / cfg.accumulate).backward()
        loss_sum += loss_n / total / cfg.accumulate
        for k, v in logs_n.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + v / total / cfg.accumulate
        res.samples += total
    res.loss, res.logs = loss_sum, logs_sum
    if cfg.grad_clip:
        res.grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    if device.type == "cuda" and sync:
        torch.cuda.synchronize(device)
    res.seconds = time.perf_counter() - t_step
    if ema_pairs:
        ema_update(ema_pairs, ema_momentum((step + 1) / cfg.steps) if ema_momentum else 0.996)
    if after_step is not None:
        after_step(StepInfo(step + 1, cfg.steps))
    return res


@dataclass
class _FitState:
    """The loop's counters. The first five are what a checkpoint carries to a resumed process; the rest belong to
    this process, so that its FitResult reports its own steps' timings."""

    step: int = 0
    best: float | None = None
    skipped: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    drawn: int = 0  # micro-batches drawn: where a keyed loader's stream resumes
    last_loss: float | None = None
    bad_in_a_row: int = 0
    samples: int = 0
    data_waits: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    t0: float = 0.0
    wall_before: float = 0.0

    def wall(self) -> float:
        """Training time including the interrupted processes before this one, so a resumed run is not cheap."""
        return self.wall_before + time.time() - self.t0


def _check_ema_targets(ema_pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    """A teacher moves by the EMA alone; one that requires grad is a method's bug (it could be optimised as well),
    so refuse it before any step."""
    for _, teacher in ema_pairs:
        assert not any(p.requires_grad for p in teacher.parameters()), "EMA targets must not require grad"


def _resume(ckpt_path: Path, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> _FitState:
    """Pick an interrupted run up where its last checkpoint left it. The RNG state is restored too, so that the
    rest of the run does not replay the random draws of its start."""
    st = _FitState()
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"], strict=True)
        opt.load_state_dict(ck["optimizer"])
        st.step, st.best, st.skipped, st.history = ck["step"], ck["best"], ck["skipped"], ck.get("history", [])
        st.drawn = ck.get("drawn", 0)
        st.last_loss = ck.get("last_loss")
        w = distributed.world()
        ranks = ck.get("rng_ranks") or [ck["rng"]]
        if len(ranks) == w.size:
            _set_rng_state(ranks[w.rank])  # each process continues its own stream
        else:  # resumed on another number of processes: the main process's stream, split anew
            _set_rng_state(ck["rng"])
            _split_rng()
    elif distributed.world().distributed:
        _split_rng()
    return st


def _split_rng() -> None:
    """Give each process its own random stream (dropout, masks drawn in a step), derived from the seeded stream all
    processes share, so that N processes do not repeat one draw N times. A single process keeps its stream."""
    w = distributed.world()
    if w.distributed:
        base = int(torch.randint(0, 2**62, (1,)))  # the same on every process: their RNGs were seeded alike
        seed_everything(int(np.random.SeedSequence([base, w.rank]).generate_state(1, np.uint64)[0]) % 2**63)


def _start_clock(st: _FitState) -> None:
    """Start this process's wall clock and report the earlier processes' time to :func:`earlier_wall`, which adds
    it to the cell's recorded compute."""
    st.t0, st.wall_before = time.time(), (st.history[-1]["wall_s"] if st.history else 0.0)
    if st.wall_before and (acc := _earlier_wall.get()) is not None:
        acc.append(st.wall_before)


def _save_checkpoint(ckpt_path: Path, model: nn.Module, opt: torch.optim.Optimizer, st: _FitState) -> None:
    """Everything a rerun needs to continue from this step; written atomically, so that a kill mid-save leaves the
    previous checkpoint intact. Every process calls it (their RNG states are gathered); the main one writes it."""
    rngs = distributed.gather_objects(_rng_state())
    if not distributed.is_main():
        return
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": st.step,
            "best": st.best,
            "skipped": st.skipped,
            "history": st.history + [{"wall_s": st.wall()}],
            "drawn": st.drawn,
            "last_loss": st.last_loss,  # a rerun with no step left still reports the run's final loss
            "rng": rngs[0],
            **({"rng_ranks": rngs} if len(rngs) > 1 else {}),
        },
        ckpt_path,
    )


def _progress_bar(cfg: TrainConfig, step: int, desc: str, progress: bool) -> Any:
    """A bar that starts at the resumed step, so that a resumed run shows its progress through the whole run."""
    from tqdm.auto import tqdm

    show = progress and distributed.is_main()  # one bar per job, not one per process
    return tqdm(total=cfg.steps, initial=step, desc=desc, disable=not show, unit="step", dynamic_ncols=True)


def _nan_guard(st: _FitState, cfg: TrainConfig, desc: str, bar: Any, logger: ScalarLogger) -> None:
    """A dropped step is tolerated (a rare overflow should not end a run); too many in a row is a real failure."""
    st.skipped += 1
    st.bad_in_a_row += 1
    if st.bad_in_a_row >= cfg.max_bad_steps:
        bar.close()
        logger.close()
        raise NonFiniteLossError(f"{desc}: {st.bad_in_a_row} consecutive non-finite losses at step {st.step}")


def _count_step(st: _FitState, res: StepResult, bar: Any) -> None:
    """Count a real optimizer step, keeping its timings for the cost report and the bar's throughput."""
    st.bad_in_a_row = 0
    st.step_times.append(res.seconds)
    st.data_waits.append(res.data_wait)
    st.step += 1
    st.last_loss = res.loss
    elapsed = time.time() - st.t0
    bar.update(1)
    bar.set_postfix(loss=f"{res.loss:.4f}", samples_s=f"{st.samples / max(elapsed, 1e-9):.2f}")


def _log_step(logger: ScalarLogger, step: int, res: StepResult, opt: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Every ``log_every`` steps and at the last, so that even a short run's curve ends at its final loss."""
    if step % cfg.log_every == 0 or step == cfg.steps:
        scal = {"loss": res.loss, "lr": opt.param_groups[0]["lr"], **res.logs}
        if res.grad_norm is not None:
            scal["grad_norm"] = res.grad_norm
        logger.log(step, scal)


def _select_on_val(
    model: nn.Module,
    eval_fn: Callable[[], float] | None,
    cfg: TrainConfig,
    st: _FitState,
    logger: ScalarLogger,
    run_dir: Path,
) -> None:
    """Model selection: keep the weights with the best val score on disk, so that selection survives a resume.
    Only the main process evaluates (the others wait for it at their next collective); the score lives in its
    checkpoint and the weights in ``best.pt``, which every process loads at the end."""
    if eval_fn is not None and cfg.eval_every and (st.step % cfg.eval_every == 0 or st.step == cfg.steps):
        if not distributed.is_main():
            return
        model.eval()
        score = float(eval_fn())
        model.train()
        logger.log(st.step, {"val_score": score})
        if st.best is None or score > st.best:
            st.best = score
            atomic_torch_save(model.state_dict(), run_dir / BEST)


def _finish(
    model: nn.Module,
    eval_fn: Callable[[], float] | None,
    run_dir: Path,
    device: torch.device,
    st: _FitState,
    bar: Any,
    logger: ScalarLogger,
) -> FitResult:
    """Hand back the selected weights (not the last ones) in eval mode, which is what every caller evaluates."""
    bar.close()
    logger.close()
    distributed.barrier()  # best.pt is written by the main process
    if eval_fn is not None and (run_dir / BEST).is_file():
        model.load_state_dict(torch.load(run_dir / BEST, map_location=device, weights_only=True), strict=True)
    model.eval()
    return FitResult(
        steps=st.step,
        wall_s=st.wall(),
        best_score=st.best,
        last_loss=st.last_loss,
        skipped_steps=st.skipped,
        data_waits=st.data_waits,
        step_times=st.step_times,
    )


def fit(
    model: nn.Module,
    step_fn: Callable[[Any, StepInfo], StepOutput],
    param_groups: list[dict[str, Any]],
    loader: Iterable,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    device: torch.device,
    ema_pairs: list[tuple[nn.Module, nn.Module]] | None = None,
    ema_momentum: Callable[[float], float] | None = None,
    after_step: Callable[[StepInfo], None] | None = None,
    eval_fn: Callable[[], float] | None = None,
    desc: str = "train",
    log_prefix: str = "train",
    progress: bool = True,
    timing: bool = False,
) -> FitResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps; resume from ``run_dir/last.ckpt`` if present.

    With ``eval_fn`` and ``cfg.eval_every``, the weights with the best score are kept in
    ``run_dir/best.pt`` and loaded back into ``model`` at the end (model selection on val).
    With ``timing`` every step synchronises the GPU so ``step_times`` are exact (benchmarks only).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    ema_pairs = ema_pairs or []
    _check_ema_targets(ema_pairs)
    distributed.sync_batchnorm(model, device)  # converts in place below the root: ema_pairs stay valid
    model.to(device)
    opt = build_optimizer(param_groups, cfg, device)
    base_lrs = [g["lr"] for g in opt.param_groups]  # the config's rates, before a checkpoint's are loaded
    st = _resume(run_dir / CKPT, model, opt, device)
    resume_stream = getattr(getattr(loader, "sampler", None), "start_at", None)
    if resume_stream is not None:
        resume_stream(st.drawn)
    logger = ScalarLogger(run_dir, log_prefix)
    data = infinite(loader)
    _start_clock(st)
    if cfg.compile and device.type == "cuda":
        step_fn = torch.compile(step_fn)
    ddp = data_parallel(model, step_fn, device)
    bar = _progress_bar(cfg, st.step, desc, progress)
    model.train()
    while st.step < cfg.steps:
        res = train_step(
            model,
            step_fn,
            data,
            opt,
            cfg,
            st.step,
            device=device,
            base_lrs=base_lrs,
            ema_pairs=ema_pairs,
            ema_momentum=ema_momentum,
            after_step=after_step,
            sync=timing,
            ddp=ddp,
        )
        st.samples += res.samples
        st.drawn += res.batches
        if not res.finite:
            _nan_guard(st, cfg, desc, bar, logger)  # the step's gradients were dropped: retry the same step
            continue
        _count_step(st, res, bar)
        _log_step(logger, st.step, res, opt, cfg)
        _select_on_val(model, eval_fn, cfg, st, logger, run_dir)
        if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps:
            _save_checkpoint(run_dir / CKPT, model, opt, st)
    return _finish(model, eval_fn, run_dir, device, st, bar, logger)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
    return 1


def pick_device(spec: str = "auto") -> torch.device:
    if spec in ("auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
