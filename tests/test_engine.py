"""The one training loop: schedule, resume, NaN guard, EMA timing under accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.engine import NonFiniteLossError, TrainConfig, earlier_wall, fit, lr_factor
from methods.base import StepOutput, make_teacher


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.teacher = make_teacher(self.lin)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g)
    return [{"x": x[i : i + 2], "y": x[i : i + 2].sum(1, keepdim=True)} for i in range(0, 8, 2)]


def _step(model):
    def step(batch, info):
        return StepOutput(((model.lin(batch["x"]) - batch["y"]) ** 2).mean())

    return step


def test_warmup_cosine_schedule():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr=0.0)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.5)
    assert lr_factor(110, cfg) == pytest.approx(0.0, abs=1e-12)


def _crash_at_step_9(model, cfg, run_dir):
    """Train ``model`` until an interrupt at step 9, as a killed process would (its last checkpoint: step 8)."""
    inner = _step(model)

    def crashing(batch, info):
        if info.step == 9:
            raise KeyboardInterrupt
        return inner(batch, info)

    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            crashing,
            [{"params": model.lin.parameters()}],
            _loader(),
            cfg,
            run_dir,
            device=torch.device("cpu"),
            progress=False,
        )


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=12, lr=0.05, optimizer="sgd", checkpoint_every=4, amp=False, weight_decay=0.0)
    torch.manual_seed(0)
    ref = Toy()
    fit(
        ref,
        _step(ref),
        [{"params": ref.lin.parameters()}],
        _loader(),
        cfg,
        tmp_path / "ref",
        device=torch.device("cpu"),
        progress=False,
    )

    torch.manual_seed(0)
    _crash_at_step_9(Toy(), cfg, tmp_path / "run")
    assert (tmp_path / "run" / "last.ckpt").is_file()
    m2 = Toy()  # a fresh process would start from new weights
    seen = []

    def recording(batch, info):
        seen.append(info.step)
        return _step(m2)(batch, info)

    res = fit(
        m2,
        recording,
        [{"params": m2.lin.parameters()}],
        _loader(),
        cfg,
        tmp_path / "run",
        device=torch.device("cpu"),
        progress=False,
    )
    assert seen[0] == 8, "resumed from the step-8 checkpoint"
    assert res.steps == 12
    # 8 is a multiple of the 4-batch epoch, so the restarted loader feeds the same batches as the
    # uninterrupted run; weights and optimizer state came from the checkpoint -> identical result
    assert torch.allclose(m2.lin.weight, ref.lin.weight, atol=1e-6)
    assert torch.allclose(m2.lin.bias, ref.lin.bias, atol=1e-6)


def test_resumed_fit_reports_the_training_time_of_the_interrupted_process(tmp_path):
    cfg = TrainConfig(steps=12, lr=0.05, optimizer="sgd", checkpoint_every=4, amp=False, weight_decay=0.0)
    _crash_at_step_9(Toy(), cfg, tmp_path / "run")
    before = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["history"][-1]["wall_s"]
    assert before > 0
    m2 = Toy()
    with earlier_wall() as earlier:
        res = fit(
            m2,
            _step(m2),
            [{"params": m2.lin.parameters()}],
            _loader(),
            cfg,
            tmp_path / "run",
            device=torch.device("cpu"),
            progress=False,
        )
    assert earlier == [before] and res.wall_s > before
    with earlier_wall() as fresh:  # a run that starts from scratch has no earlier time
        fit(
            m2,
            _step(m2),
            [{"params": m2.lin.parameters()}],
            _loader(),
            cfg,
            tmp_path / "fresh",
            device=torch.device("cpu"),
            progress=False,
        )
    assert fresh == []


def test_nan_guard_skips_and_gives_up(tmp_path):
    m = Toy()
    bad_steps = {3}

    def step(batch, info):
        out = _step(m)(batch, info)
        if info.step in bad_steps and not getattr(step, "done", False):
            step.done = True
            return StepOutput(out.loss * float("nan"))
        return out

    before = m.lin.weight.clone()
    res = fit(
        m,
        step,
        [{"params": m.lin.parameters()}],
        _loader(),
        TrainConfig(steps=6, amp=False),
        tmp_path / "a",
        device=torch.device("cpu"),
        progress=False,
    )
    assert res.skipped_steps == 1 and res.steps == 6 and not torch.equal(before, m.lin.weight)
    assert torch.isfinite(m.lin.weight).all()

    def always_nan(batch, info):
        return StepOutput(_step(m)(batch, info).loss * float("nan"))

    with pytest.raises(NonFiniteLossError):
        fit(
            m,
            always_nan,
            [{"params": m.lin.parameters()}],
            _loader(),
            TrainConfig(steps=6, max_bad_steps=3),
            tmp_path / "b",
            device=torch.device("cpu"),
            progress=False,
        )


def test_ema_only_after_real_optimizer_steps(tmp_path):
    m = Toy()
    momenta = []

    def mom(progress):
        momenta.append(progress)
        return 0.5

    fit(
        m,
        _step(m),
        [{"params": m.lin.parameters()}],
        _loader(),
        TrainConfig(steps=5, accumulate=3, amp=False),
        tmp_path,
        device=torch.device("cpu"),
        ema_pairs=[(m.lin, m.teacher)],
        ema_momentum=mom,
        progress=False,
    )
    assert len(momenta) == 5, "one EMA update per optimizer step, not per micro-batch"
    assert momenta[-1] == pytest.approx(1.0)


def test_ema_update_formula():
    from bench.engine import ema_update

    s, t = nn.Linear(2, 2), nn.Linear(2, 2)
    t0 = [p.clone() for p in t.parameters()]
    ema_update([(s, t)], 0.9)
    for p0, ps, pt in zip(t0, s.parameters(), t.parameters()):
        assert torch.allclose(pt, 0.9 * p0 + 0.1 * ps)


def test_teacher_requiring_grad_is_refused(tmp_path):
    m = Toy()
    for p in m.teacher.parameters():
        p.requires_grad_(True)
    with pytest.raises(AssertionError):
        fit(
            m,
            _step(m),
            [{"params": m.lin.parameters()}],
            _loader(),
            TrainConfig(steps=1),
            tmp_path,
            device=torch.device("cpu"),
            ema_pairs=[(m.lin, m.teacher)],
            progress=False,
        )


def test_model_selection_keeps_best(tmp_path):
    m = Toy()
    scores = iter([0.1, 0.9, 0.3])
    snap = {}

    def ev():
        s = next(scores)
        snap[s] = m.lin.weight.detach().clone()
        return s

    res = fit(
        m,
        _step(m),
        [{"params": m.lin.parameters()}],
        _loader(),
        TrainConfig(steps=6, eval_every=2, amp=False, lr=0.1),
        tmp_path,
        device=torch.device("cpu"),
        eval_fn=ev,
        progress=False,
    )
    assert res.best_score == 0.9
    assert torch.equal(m.lin.weight, snap[0.9])
    assert math.isfinite(res.last_loss)


def test_two_processes_saving_the_same_file_at_once_both_succeed(tmp_path):
    """Two runs of one method write the same export path: with one fixed temporary name, one process's os.replace
    moved the other's half-written file away (FileNotFoundError). Each write now has its own temporary name."""
    import subprocess
    import sys

    target = tmp_path / "export.pt"
    code = (
        "import sys, torch; from pathlib import Path; from bench.engine import atomic_torch_save\n"
        "x = torch.full((256, 1024), float(sys.argv[2]))\n"
        "for _ in range(40): atomic_torch_save({'w': x}, Path(sys.argv[1]))\n"
    )
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(target), str(k)], cwd=root, stderr=subprocess.PIPE, text=True)
        for k in (1, 2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    value = float(torch.load(target, weights_only=True)["w"][0, 0])
    assert value in (1.0, 2.0)  # one whole file, never a mix or a truncation
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_a_tensorboard_that_fails_to_start_is_said_and_jsonl_still_written(tmp_path, monkeypatch):
    import torch.utils.tensorboard as tb

    from bench.engine import ScalarLogger

    def broken(*a, **k):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(tb, "SummaryWriter", broken)
    with pytest.warns(UserWarning, match=r"TensorBoard logging is off .*OSError: disk quota exceeded"):
        log = ScalarLogger(tmp_path, "pretrain")
    log.log(1, {"loss": 0.5})
    log.close()
    assert '"pretrain/loss": 0.5' in (tmp_path / "scalars.jsonl").read_text()


def test_seeded_cpu_runs_are_bit_reproducible_on_several_threads():
    """The backward of indexing with repeated indices (Swin's relative-position bias gather) adds in a thread-
    dependent order unless deterministic kernels are on: seed_everything turns them on for the CPU, so that a killed
    and resumed run can equal an uninterrupted one bit for bit (tests/test_kill_resume.py)."""
    from bench.engine import seed_everything

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seed_everything(0)
        w = 7  # one 7^3 window: each of the 13^3 offsets repeats up to 343 times
        coords = torch.stack(torch.meshgrid(*[torch.arange(w)] * 3, indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
        index = (rel[..., 0] * (2 * w - 1) ** 2 + rel[..., 1] * (2 * w - 1) + rel[..., 2]).reshape(-1)
        table = torch.randn((2 * w - 1) ** 3, 1, requires_grad=True)
        g = torch.randn(index.numel(), 1)

        def grad() -> torch.Tensor:
            table.grad = None
            table[index].backward(g)
            return table.grad.clone()

        first = grad()
        assert all(torch.equal(grad(), first) for _ in range(30))
    finally:
        torch.set_num_threads(threads)
