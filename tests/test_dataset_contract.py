"""The contract every registered dataset must keep (parametrized over the registry, like test_method_contract).

For each dataset:

1. an instance has every member of the harness's ``DatasetAdapter`` protocol (bench/types.py), checked by name;
2. its split file ``datasets/splits/<split_name or name>.json`` exists, parses, and is either *committed* (id lists)
   or declared ``"derived": true`` (the ids come from the dataset's own files at load time: empty lists whose keys
   name every split the adapter serves);
3. ids are unique within each split;
4. no id and no patient (the id reduced by the patient pattern of a task on the dataset) is in two of train/val/test
   of one split scheme (``train``/``val``/``test``, or ``<scheme>_train``/...), and no pretraining (or other
   corpus) split holds a patient of any val/test split;
5. every split a suite uses exists: the pretraining splits of a suite's corpus, and train/val/<task.split> of every
   task's dataset; every val/test split the adapter serves is a key of its split file, since that is where the
   runner's leakage guard looks for the splits to hash;
6. a synthetic dataset generates (one case per split, in a temporary data cache) and one record loads.

Real datasets have no data here: checks 1-5 only.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

import bench.types as types
from bench.registry import DATASETS, SUITES
from bench.types import SPLITS_DIR, DatasetAdapter, DatasetInfo
from datasets.base import DatasetAdapter as BaseAdapter

ROLES = ("train", "val", "test")
EVAL_SPLIT = re.compile(r"^(?:(?P<scheme>.+)_)?(?P<role>train|val|test)$")


def protocol_members(proto: type) -> set[str]:
    """The names a Protocol declares: its annotated attributes and the methods defined in its body."""
    names = set(getattr(proto, "__annotations__", {}))
    names |= {n for n, v in vars(proto).items() if not n.startswith("_") and callable(v)}
    return names


def split_file_name(name: str) -> str:
    return getattr(DATASETS.get(name), "split_name", None) or name


def split_doc(name: str) -> dict:
    return json.loads((SPLITS_DIR / f"{split_file_name(name)}.json").read_text())


def make(name: str, tmp_path) -> BaseAdapter:
    cls = DATASETS.get(name)
    if cls.info.synthetic:
        return cls(cache_dir=tmp_path)
    return cls(root=tmp_path / "no-data-here", cache_dir=tmp_path)  # a real dataset: no files are read


def patient_patterns(name: str) -> list[re.Pattern]:
    pats = {
        t.patient_pattern
        for s in SUITES.names()
        for t in SUITES.get(s).tasks
        if t.dataset == name and t.patient_pattern
    }
    return [re.compile(p) for p in sorted(pats)]


def patient_of(rid: str, patterns: list[re.Pattern]) -> str:
    for p in patterns:
        m = p.match(rid)
        if m:
            return m.group(1)
    return rid


def uses(name: str) -> dict[str, list[str]]:
    """split -> what uses it (suite corpora and tasks naming this dataset)."""
    out: dict[str, list[str]] = {}
    for s in SUITES.names():
        suite = SUITES.get(s)
        if suite.pretrain_dataset == name:
            for sp in suite.pretrain_splits:
                out.setdefault(sp, []).append(f"suite {s} (pretraining corpus)")
        for t in suite.tasks:
            if t.dataset == name:
                for sp in dict.fromkeys(("train", "val", t.split)):
                    out.setdefault(sp, []).append(f"suite {s} task {t.name}")
    return out


def served_ids(ds: BaseAdapter, splits: dict[str, list[str]], split: str) -> list[str] | None:
    """The ids of a split: the split file's list, or (a split the adapter derives in code, e.g. smoke's pretrain =
    the train images) the patient ids of its records where listing them needs no data; None where it does."""
    if split in splits:
        return list(splits[split])
    try:
        return [r.patient_id for r in ds.records(split)]
    except (types.DataError, OSError, KeyError):
        return None


NAMES = DATASETS.names()


def test_every_dataset_is_checked():
    assert len(NAMES) >= 20 and {"smoke", "abdomen", "amos", "msd_pancreas", "btcv_liu"} <= set(NAMES)
    assert {"info", "registry_name", "split_name", "prepare", "records", "load", "validate"} <= protocol_members(
        DatasetAdapter
    )


# ---------------------------------------------------------------------------------------------- 1. the protocol


@pytest.mark.parametrize("name", NAMES)
def test_adapter_has_every_protocol_member(name, tmp_path):
    ds = make(name, tmp_path)
    missing = sorted(m for m in protocol_members(DatasetAdapter) if not hasattr(ds, m))
    assert not missing, f"dataset {name!r} lacks protocol member(s) {missing}"
    assert isinstance(ds, DatasetAdapter)
    assert isinstance(ds.info, DatasetInfo) and ds.registry_name == name
    assert ds.split_name is None or isinstance(ds.split_name, str)
    for m in ("prepare", "records", "load", "validate"):
        assert callable(getattr(ds, m)), f"{name}.{m} is not callable"
    # not a harness call, but what validate() and this contract read: the splits the adapter serves
    assert callable(getattr(ds, "split_names", None)), f"{name} has no split_names() (datasets.base API)"
    assert ds.info.spatial_dims in (2, 3) and ds.info.n_channels >= 1


# ---------------------------------------------------------------------------------------------- 2. the split file


@pytest.mark.parametrize("name", NAMES)
def test_split_file_is_present_and_well_formed(name, tmp_path):
    fname = split_file_name(name)
    path = SPLITS_DIR / f"{fname}.json"
    assert path.is_file(), f"dataset {name!r}: split file {path} missing"
    doc = json.loads(path.read_text())
    assert doc.get("dataset") == fname, f"{path}: 'dataset' is {doc.get('dataset')!r}, not {fname!r}"
    splits = types.load_split_file(fname)
    assert isinstance(splits, dict)
    for k, v in splits.items():
        assert isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) and i for i in v), (
            f"{path}: split {k!r} is not a list of ids"
        )
    served = set(make(name, tmp_path).split_names())
    if doc.get("derived"):
        # ids come from the dataset's own files at load time; the keys must name what the adapter serves
        assert not any(splits.values()), f"{path}: a derived split file lists ids"
        assert served <= set(splits), (
            f"{path} is derived but does not name the split(s) {sorted(served - set(splits))} that {name!r} serves"
        )
    else:
        assert any(splits.values()), f'{path}: no ids, and not declared "derived": true'
        assert set(splits) <= served, (
            f"{path}: split(s) {sorted(set(splits) - served)} are not served by {name!r} (split_names {sorted(served)})"
        )


# ---------------------------------------------------------------------------------------------- 3. unique ids


@pytest.mark.parametrize("name", NAMES)
def test_ids_are_unique_within_each_split(name):
    for split, ids in types.load_split_file(split_file_name(name)).items():
        dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        assert not dup, f"{split_file_name(name)}.json split {split!r} repeats {dup[:5]}"


# ---------------------------------------------------------------------------------------------- 4. no leakage


@pytest.mark.parametrize("name", NAMES)
def test_no_id_or_patient_in_two_splits(name, tmp_path):
    ds = make(name, tmp_path)
    splits = types.load_split_file(split_file_name(name))
    pats = patient_patterns(name)
    ids = {s: v for s in dict.fromkeys([*splits, *ds.split_names()]) if (v := served_ids(ds, splits, s)) is not None}
    patients = {s: {patient_of(i, pats) for i in v} for s, v in ids.items()}
    roles = {s: m for s in ids if (m := EVAL_SPLIT.match(s))}
    problems = []
    for a in roles:
        for b in roles:
            if a < b and roles[a]["scheme"] == roles[b]["scheme"]:
                if both := set(ids[a]) & set(ids[b]):
                    problems.append(f"ids in both {a!r} and {b!r}: {sorted(both)[:5]}")
                elif both := patients[a] & patients[b]:
                    problems.append(f"patients in both {a!r} and {b!r}: {sorted(both)[:5]}")
    evaluated = [s for s, m in roles.items() if m["role"] in ("val", "test")]
    for corpus in (s for s in ids if s not in roles):
        for ev in evaluated:
            if both := patients[corpus] & patients[ev]:
                problems.append(
                    f"corpus split {corpus!r} holds {len(both)} patient(s) of evaluation split "
                    f"{ev!r}: {sorted(both)[:6]}"
                )
    assert not problems, f"{split_file_name(name)}.json ({name}): " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------- 5. suites' splits


@pytest.mark.parametrize("name", NAMES)
def test_every_split_a_suite_uses_exists(name, tmp_path):
    ds = make(name, tmp_path)
    served = set(ds.split_names())
    missing = {sp: who for sp, who in uses(name).items() if sp not in served}
    assert not missing, (
        f"dataset {name!r} does not serve "
        + "; ".join(f"split {sp!r} used by {', '.join(who)}" for sp, who in missing.items())
        + f" (it serves {sorted(served)})"
    )
    # the leakage guard (bench/runner.py check_leakage) hashes the val/test splits its split file names
    keys = set(types.load_split_file(split_file_name(name)))
    unseen = sorted(s for s in served if (m := EVAL_SPLIT.match(s)) and m["role"] != "train" and s not in keys)
    assert not unseen, (
        f"dataset {name!r} serves evaluation split(s) {unseen} that its split file "
        f"{split_file_name(name)}.json does not name, so the leakage guard never checks them"
    )


def test_suites_name_registered_datasets():
    for s in SUITES.names():
        suite = SUITES.get(s)
        assert suite.pretrain_dataset in DATASETS, (s, suite.pretrain_dataset)
        assert all(t.dataset in DATASETS for t in suite.tasks), s


# ---------------------------------------------------------------------------------------------- 6. synthetic data

# one case per split of each takes at most a few seconds on 2 CPU cores (2.2 s for abdomen_shuffled), so none is slow
SYNTHETIC = [n for n in NAMES if DATASETS.get(n).info.synthetic]


def one_case_per_split(monkeypatch, cls: type) -> None:
    """Make every module of the adapter's class hierarchy read its split file cut to the first id of each split."""
    real = types.load_split_file

    def first_only(name: str) -> dict[str, list[str]]:
        return {k: v[:1] for k, v in real(name).items()}

    for klass in cls.__mro__:
        mod = sys.modules.get(klass.__module__)
        if mod is not None and getattr(mod, "load_split_file", None) is real:
            monkeypatch.setattr(mod, "load_split_file", first_only)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_dataset_generates_and_a_record_loads(name, data_dir, monkeypatch):
    cls = DATASETS.get(name)
    one_case_per_split(monkeypatch, cls)
    ds = cls(cache_dir=data_dir / "contract")
    ds.prepare(progress=False)
    split = next(s for s in ("train", "test", "val") if ds.records(s))
    assert len(ds.split_ids(split)) == 1  # the cut took: one case was generated, not the whole set
    rec = ds.records(split)[0]
    sample = ds.load(rec)
    image = sample["image"]
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    assert image.ndim == ds.info.spatial_dims + 1 and image.shape[0] == ds.info.n_channels, image.shape
    assert np.isfinite(image).all()
    assert len(sample["spacing"]) == ds.info.spatial_dims and all(v > 0 for v in sample["spacing"])
    if ds.info.task == "segmentation":
        assert sample["label"] is not None and sample["label"].shape == image.shape[1:]
        assert set(np.unique(sample["label"]).tolist()) <= set(ds.info.labels)
    else:
        assert rec.classes is not None and all(c in ds.info.labels for c in rec.classes)
    assert ds.validate((split,)) == []
