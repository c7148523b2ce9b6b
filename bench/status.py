"""``stage=status``: where a sweep stands, from the results store and the runs folder, without running anything.

For the plan's pretraining(s) and each of its cells: complete, running (host, pid, SLURM job, since when), failed
(the error's first line) or missing. Rerunning the same command (or sweep) runs exactly the cells that are not
complete: failed ones are retried, complete ones skipped.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from bench import jobs, runner
from bench.plan import Plan, config_hash, pipeline_plans


def _alive(host: Any, pid: Any) -> bool | None:
    """Whether the process is alive; None when it ran on another host (this one cannot tell)."""
    if host != socket.gethostname() or pid is None or pid != pid:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pretraining_state(plan: Plan, h: str, cells_complete: bool) -> tuple[str, str]:
    """``h``: the config hash of the plan's pretraining; ``cells_complete``: whether every cell it feeds is complete
    (then a deleted export is not pretrained again, as in bench.runner.run)."""
    run_dir = runner.pretrain_dir(plan, h)
    if (run_dir / runner.EXPORT).is_file():
        return "complete", f"{plan.method} {h}"
    who = jobs.holder(run_dir)
    if who is not None:
        alive = _alive(who.get("host"), who.get("pid"))
        state = "stopped (its process is gone)" if alive is False else "running"
        return state, f"{plan.method} {h} on {jobs.describe(who)} since {who.get('since')}"
    if (run_dir / "last.ckpt").is_file():
        return "interrupted (resumes from its checkpoint)", f"{plan.method} {h}"
    if cells_complete:
        return "not needed (no export, but every cell is complete)", f"{plan.method} {h}"
    return "missing", f"{plan.method} {h}"


def _attempts_by_cell(plan: Plan) -> dict[str, dict[str, Any]]:
    attempts = plan.store.attempts()
    return {r["cell_id"]: r for r in attempts.to_dict("records")} if len(attempts) else {}


def _pipeline_cell_states(pipeline: Plan, ph: str, by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for cell in runner.transfer_cells(pipeline):
        proto_cls, _, ident, h, cid = runner.cell_config(pipeline, cell, ph)
        row = {"cell": cid, "config_hash": h, "state": "missing", "detail": ""}
        a = by_id.get(cid)
        if pipeline.store.is_complete(cid, h):
            row["state"] = "complete"
        elif (same := runner.deterministic_repeat(pipeline, cell, ident, proto_cls)) is not None:
            row |= {"state": "complete", "detail": f"deterministic: the run stored as {same}"}
        elif a is not None and a["config_hash"] == h and a["status"] == "running":
            alive = _alive(a.get("host"), a.get("pid"))
            state = "stopped (its process is gone; rerun to retry)" if alive is False else "running"
            row |= {"state": state, "detail": f"{jobs.describe(a)} since {a.get('started')}"}
        elif a is not None and a["config_hash"] == h and a["status"] == "failed":
            row |= {"state": "failed", "detail": f"{a.get('error')} ({jobs.describe(a)}, {a.get('updated')})"}
        out.append(row)
    return out


def cell_states(plan: Plan) -> list[dict[str, Any]]:
    by_id = _attempts_by_cell(plan)
    return [
        row
        for pipeline in pipeline_plans(plan)
        for row in _pipeline_cell_states(pipeline, config_hash(runner.pretrain_identity(pipeline)), by_id)
    ]


def report(plan: Plan) -> str:
    lines, cells = [], []
    by_id = _attempts_by_cell(plan)
    for pipeline in pipeline_plans(plan):
        # one identity per pipeline (an external checkpoint's hashes the whole file), one walk over its cells
        ph = config_hash(runner.pretrain_identity(pipeline))
        rows = _pipeline_cell_states(pipeline, ph, by_id)
        state, what = pretraining_state(pipeline, ph, all(r["state"] == "complete" for r in rows))
        lines.append(f"pretraining {what}: {state}")
        cells += rows
    counts: dict[str, int] = {}
    for c in cells:
        key = c["state"].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    order = ["complete", "running", "stopped", "failed", "missing"]
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in order if counts.get(k) or k in ("complete", "missing"))
    head = f"[status] suite {plan.suite.name}, method {plan.method}, budget {plan.budget}: {summary}"
    table = ["| cell | state | where / why |", "|---|---|---|"]
    table += [f"| {c['cell']} | {c['state']} | {c['detail']} |" for c in cells]
    return "\n".join([head, *lines, *table])
