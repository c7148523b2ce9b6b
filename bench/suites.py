"""Suites: versioned, frozen lists of tasks and seeds.

A suite expands to cells (method, task, protocol, label fraction, seed). Changing a task list bumps
the version; leaderboards are keyed by (suite, version). Suites are registered next to their
datasets (datasets/), never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    kind: str  # "segmentation" | "classification"
    protocols: tuple[str, ...]
    label_fractions: tuple[float, ...] = (1.0,)
    metric: str = "dice"
    split: str = "test"
    draws: int = 1  # independent subsets per label fraction < 1
    # the (protocol, label fraction) that stands for this task in a leaderboard's across-task analysis, declared
    # before results exist so that it cannot be picked for how it ranks; None: the first protocol at the largest
    # label fraction
    primary: tuple[str, float] | None = None
    # a regex whose first group is the patient of a case or image id (several slices or radiographs per patient):
    # a leaderboard then resamples patients, not images, since images of one patient are not independent
    patient_pattern: str | None = None
    # per-protocol settings this task fixes for every method (e.g. the brain suite's SACA head for finetune)
    protocol_options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def primary_table(self) -> tuple[str, float]:
        """(protocol, label fraction) of the task's pre-declared primary table."""
        return self.primary if self.primary is not None else (self.protocols[0], max(self.label_fractions))


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    tasks: tuple[Task, ...]
    seeds: tuple[int, ...]
    pretrain_dataset: str  # the unlabelled corpus methods pretrain on
    pretrain_splits: tuple[str, ...] = ("pretrain",)
    synthetic: bool = False
    description: str = ""
    preprocessing: dict = field(default_factory=dict, hash=False, compare=False)
    # the version of the suite's data, which decides whether an encoder pretrained for an earlier version may be
    # reused; None: ``version``. A version that only adds tasks or protocols keeps the data version of the one before
    data_version: int | None = None
    # the task lists of earlier versions that differ from the current one: K -> the tasks of every version up to K
    # (after any smaller key), so that stage=leaderboard suite_version=K renders a record with the tasks it had
    tasks_until: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def corpus_version(self) -> int:
        return self.version if self.data_version is None else self.data_version

    def tasks_of(self, version: int) -> tuple[Task, ...]:
        """The task list of ``version`` of this suite."""
        later = [k for k in self.tasks_until if k >= version]
        return self.tasks_until[min(later)] if later else self.tasks

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"suite {self.name!r} has no task {name!r}; tasks: {[t.name for t in self.tasks]}")


# the 3D segmentation representation probes (bench/protocols/probes.py), listed by every 3D segmentation suite
PROBES_3D = ("voxel_probe", "knn_seg")


def protocols_added(suite: Suite, version: int, protocols: tuple[str, ...]) -> Suite:
    """``suite``, recording that its ``version`` added ``protocols`` to its tasks: the versions before it had the
    tasks without them (and a primary table that named one of them was the default one)."""

    def before(task: Task) -> Task:
        primary = task.primary if task.primary is None or task.primary[0] not in protocols else None
        return replace(task, protocols=tuple(p for p in task.protocols if p not in protocols), primary=primary)

    older = tuple(before(t) for t in suite.tasks_of(version - 1))
    return replace(suite, tasks_until=suite.tasks_until | {version - 1: tuple(t for t in older if t.protocols)})


@dataclass(frozen=True)
class Cell:
    task: Task
    protocol: str
    label_fraction: float
    seed: int
    draw: int = 0

    @property
    def key(self) -> str:
        return f"{self.task.name}/{self.protocol}/f{self.label_fraction:g}/d{self.draw}/s{self.seed}"


def expand(
    suite: Suite,
    seeds: tuple[int, ...] | None = None,
    protocol: str | tuple[str, ...] | None = None,
    label_fraction: float | None = None,
    task_name: str | None = None,
) -> list[Cell]:
    chosen = (protocol,) if isinstance(protocol, str) else protocol
    cells = []
    for task in suite.tasks:
        if task_name is not None and task.name != task_name:
            continue
        for proto in task.protocols:
            if chosen is not None and proto not in chosen:
                continue
            for frac in task.label_fractions:
                if label_fraction is not None and abs(frac - label_fraction) > 1e-9:
                    continue
                for draw in range(task.draws if frac < 1.0 else 1):
                    for seed in seeds if seeds is not None else suite.seeds:
                        cells.append(Cell(task, proto, frac, seed, draw))
    return cells
