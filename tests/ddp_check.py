"""Started by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU): the engine's optimizer step
on uneven shards with gradient accumulation, a loss that is non-finite on one process only, and the per-process RNG
streams of ``fit``. Each process saves what it ended with; the test compares them with a one-process reference."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench import distributed
from bench.engine import TrainConfig, data_parallel, fit, train_step
from bench.types import StepOutput

X = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
Y = torch.linspace(-1, 1, 8)[:, None]


def micro_batches(rank: int) -> list[dict[str, torch.Tensor]]:
    """Two global micro-batches of 4 samples; rank 0 holds 3 of each, rank 1 one."""
    part = [slice(0, 3), slice(3, 4)][rank]
    return [{"x": X[i * 4 : (i + 1) * 4][part], "y": Y[i * 4 : (i + 1) * 4][part]} for i in range(2)]


class Keyed(torch.utils.data.Dataset):
    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {"x": X[k % 8], "y": Y[k % 8]}


def main(out: Path) -> None:
    device = distributed.init(torch.device("cpu"))
    w = distributed.world()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    poison = {"on": True}

    def step_fn(batch: dict[str, torch.Tensor], info) -> StepOutput:
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        if poison["on"] and w.rank == 1:
            loss = loss * float("nan")
        return StepOutput(loss)

    cfg = TrainConfig(steps=1, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, accumulate=2, amp=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ddp = data_parallel(model, step_fn, device)
    args = dict(device=device, base_lrs=[0.1], ddp=ddp)
    dropped = train_step(model, step_fn, iter(micro_batches(w.rank)), opt, cfg, 0, **args)
    poison["on"] = False
    taken = train_step(model, step_fn, iter(micro_batches(w.rank)), opt, cfg, 0, **args)

    # fit: two steps on a keyed stream; each process then draws from its own RNG stream
    fit_model = torch.nn.Linear(3, 1)
    loader = distributed.loader(Keyed(), 4, "batch")

    def fit_step(batch: dict[str, torch.Tensor], info) -> StepOutput:
        return StepOutput(((fit_model(batch["x"]) - batch["y"]) ** 2).mean())

    fit_cfg = TrainConfig(steps=2, optimizer="sgd", lr=0.1, weight_decay=0.0, amp=False, checkpoint_every=1)
    fit(fit_model, fit_step, [{"params": list(fit_model.parameters())}], loader, fit_cfg, out / "fit", device=device)
    torch.save(
        {
            "dropped": not dropped.finite,
            "loss": taken.loss,
            "samples": taken.samples,
            "state": model.state_dict(),
            "fit_state": fit_model.state_dict(),
            "draw": torch.rand(4),
        },
        out / f"rank{w.rank}.pt",
    )
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
