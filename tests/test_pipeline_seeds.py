"""The replicate is a whole pipeline run: the pretraining seed is part of a cell's identity, ``pretrain_seed=tied``
pairs each transfer seed with its own pretraining, and a deterministic protocol (kNN) is one run per encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench import runner
from bench.runner import (
    UserError,
    cell_id,
    cell_key,
    config_hash,
    deterministic_repeat,
    make_plan,
    pipeline_plans,
    pretrain_identity,
    transfer_cells,
)

CONF = Path(__file__).resolve().parent.parent / "conf"


def _plan(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["method=random", "budget=quick", f"runs_dir={tmp_path}", *overrides]
        )
    return make_plan(cfg), cfg


def test_pretrain_seed_is_an_int_by_default_0(tmp_path):
    plan, _ = _plan(tmp_path, "suite=chest_xray")
    assert plan.pretrain_seed == 0 and not plan.tied_pretrain_seed and pipeline_plans(plan) == [plan]
    plan, _ = _plan(tmp_path, "suite=chest_xray", "pretrain_seed=2")
    assert plan.pretrain_seed == 2 and pipeline_plans(plan) == [plan] and plan.seeds == (0, 1, 2)


def test_tied_pairs_each_transfer_seed_with_its_own_pretraining(tmp_path):
    plan, _ = _plan(tmp_path, "suite=chest_xray", "pretrain_seed=tied")
    assert plan.tied_pretrain_seed
    runs = pipeline_plans(plan)
    assert [(p.pretrain_seed, p.seeds) for p in runs] == [(0, (0,)), (1, (1,)), (2, (2,))]
    assert not any(p.tied_pretrain_seed for p in runs)
    # each pipeline pretrains its own encoder: the seed is in the pretraining identity, so hash and run dir differ
    assert len({config_hash(pretrain_identity(p)) for p in runs}) == 3
    # with seed=N (one job of `-m seed=0,1,2 pretrain_seed=tied`) the pipeline is (N, N)
    plan, _ = _plan(tmp_path, "suite=chest_xray", "pretrain_seed=tied", "seed=1")
    assert [(p.pretrain_seed, p.seeds) for p in pipeline_plans(plan)] == [(1, (1,))]


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "true", "null"])
def test_a_bad_pretrain_seed_is_one_user_error_naming_the_option(tmp_path, bad):
    with pytest.raises(UserError, match=r"^pretrain_seed=.*non-negative integer.*tied"):
        _plan(tmp_path, "suite=smoke", f"pretrain_seed={bad}")


def test_cell_id_carries_the_pretraining_seed_except_seed_0(tmp_path):
    plan, _ = _plan(tmp_path, "suite=chest_xray", "pretrain_seed=tied")
    p0, p1, _ = pipeline_plans(plan)
    cell = transfer_cells(p1)[0]
    assert cell_id(p1, cell) == f"chest_xray/v{plan.suite.version}/random/quick/{cell.key}/p1"
    cell0 = transfer_cells(p0)[0]
    assert cell_id(p0, cell0) == f"chest_xray/v{plan.suite.version}/random/quick/{cell0.key}"  # as before
    assert cell_key(cell, 1).endswith("/s1/p1")


def test_run_with_tied_pretrains_and_transfers_one_seed_at_a_time(tmp_path, monkeypatch):
    plan, cfg = _plan(tmp_path, "suite=chest_xray", "pretrain_seed=tied", "stage=transfer")
    calls = []

    class NoData:
        def prepare(self, progress=True):
            pass

        def validate(self):
            return []

    monkeypatch.setattr(runner, "dataset", lambda plan, name: NoData())
    monkeypatch.setattr(
        runner,
        "pretrain",
        lambda p, ident=None: (
            calls.append(("pretrain", p.pretrain_seed, p.seeds)),
            (Path("export.pt"), f"h{p.pretrain_seed}"),
        )[1],
    )
    monkeypatch.setattr(runner, "transfer", lambda p, export, h: calls.append(("transfer", h, p.seeds)))
    from bench import leaderboard

    monkeypatch.setattr(leaderboard, "write", lambda *a, **k: tmp_path / "board.md")
    runner.run(cfg)
    assert calls == [
        ("pretrain", 0, (0,)),
        ("transfer", "h0", (0,)),
        ("pretrain", 1, (1,)),
        ("transfer", "h1", (1,)),
        ("pretrain", 2, (2,)),
        ("transfer", "h2", (2,)),
    ]


def test_a_deterministic_protocol_runs_once_per_encoder_and_says_so(tmp_path, capsys):
    plan, _ = _plan(tmp_path, "suite=chest_xray")
    cells = transfer_cells(plan)
    knn = [c for c in cells if c.protocol == "knn"]
    assert knn and {c.seed for c in knn} == {0}
    task = plan.suite.task("findings4")
    assert {(c.label_fraction, c.draw) for c in knn} == {
        (f, d) for f in task.label_fractions for d in range(task.draws if f < 1 else 1)
    }
    # the other protocols train, and run at every seed
    assert {c.seed for c in cells if c.protocol == "linear_probe"} == {0, 1, 2}
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "deterministic" in ln]
    assert lines == [
        "[transfer] knn is deterministic given the encoder: seeds 0, 1, 2 are one run, run once at seed "
        "0 (pretraining seed 0); seeds 1, 2 are not run again"
    ]
    # with tied pretraining seeds each encoder is its own run: kNN runs once per pipeline
    tied, _ = _plan(tmp_path, "suite=chest_xray", "pretrain_seed=tied")
    per = [{(c.seed, p.pretrain_seed) for c in transfer_cells(p) if c.protocol == "knn"} for p in pipeline_plans(tied)]
    assert per == [{(0, 0)}, {(1, 1)}, {(2, 2)}]


def test_a_deterministic_cell_stored_at_another_seed_is_not_run_again(tmp_path):
    """One job of ``-m seed=0,1,2``: the kNN cell the seed-0 job stored is this cell, same encoder and options."""
    from bench.protocols.base import resolve_protocol

    plan, _ = _plan(tmp_path, "suite=chest_xray", "seed=0")
    knn = next(c for c in transfer_cells(plan) if c.protocol == "knn")
    ident = {"pretrain": "ph", "protocol": "knn", "seed": 0, "task": knn.task.name}
    plan.store.write_cell(
        {
            "cell_id": cell_id(plan, knn),
            "config_hash": config_hash(ident),
            "suite": "chest_xray",
            "suite_version": 1,
            "task": knn.task.name,
            "method": "random",
            "protocol": "knn",
            "label_fraction": knn.label_fraction,
            "draw": knn.draw,
            "seed": 0,
            "budget": "quick",
        },
        [],
    )
    later, _ = _plan(tmp_path, "suite=chest_xray", "seed=1")
    mine = next(
        c
        for c in transfer_cells(later)
        if c.protocol == "knn" and c.draw == knn.draw and c.label_fraction == knn.label_fraction
    )
    assert mine.seed == 1
    kcls = resolve_protocol("knn", "classification")
    assert deterministic_repeat(later, mine, ident | {"seed": 1}, kcls) == cell_id(plan, knn)
    # another encoder (pretraining) or other options are another run; so is a protocol that trains
    assert deterministic_repeat(later, mine, ident | {"seed": 1, "pretrain": "other"}, kcls) is None
    assert deterministic_repeat(later, mine, ident | {"seed": 1, "protocol_cfg": {"k": 5}}, kcls) is None
    assert (
        deterministic_repeat(later, mine, ident | {"seed": 1}, resolve_protocol("linear_probe", "classification"))
        is None
    )
    other_p, _ = _plan(tmp_path, "suite=chest_xray", "seed=1", "pretrain_seed=1")
    assert deterministic_repeat(other_p, mine, ident | {"seed": 1}, kcls) is None


@pytest.mark.slow  # real stages three times (40-90 s on 2 cores); the unit tests above cover the plan without them
def test_two_pretraining_seeds_are_two_cells_with_their_own_encoders(data_dir, tmp_path, monkeypatch):
    """The real stages on the smoke suite (random init, 2 transfer steps): pretrain_seed=1 adds cells beside those of
    seed 0, whose ids are as they always were, from its own export and run directories; tied with seed=1 is the
    pipeline (pretraining 1, transfer 1)."""
    import sqlite3

    from bench import leaderboard

    monkeypatch.setattr(leaderboard, "write", lambda *a, **k: tmp_path / "board.md")  # only the cells matter here
    runs = tmp_path / "runs"
    for extra in (["pretrain_seed=0"], ["pretrain_seed=1"], ["pretrain_seed=tied", "seed=1"]):
        _, cfg = _plan(
            runs,
            "suite=smoke",
            "protocol=linear_probe",
            "stage=transfer",
            "device=cpu",
            "progress=false",
            "suite.budget_caps.transfer_steps=2",
            *extra,
        )
        runner.run(cfg)
    rows = (
        sqlite3.connect(runs / "results.sqlite")
        .execute("SELECT cell_id, pretrain_seed, seed, pretrain_hash, run_dir FROM cells ORDER BY cell_id")
        .fetchall()
    )
    cell = "smoke/v3/random/quick/seg3/linear_probe/f1/d0"
    assert [r[:3] for r in rows] == [(f"{cell}/s0", 0, 0), (f"{cell}/s0/p1", 1, 0), (f"{cell}/s1/p1", 1, 1)]
    assert rows[0][3] != rows[1][3] == rows[2][3] and len({r[4] for r in rows}) == 3
    assert len(list(runs.glob("pretrain/random/*/export.pt"))) == 2
