"""Unreadable checkpoints and exports: one clear error naming the file and the problem, never torch's traceback
nor its advice to load with ``weights_only=False``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from bench.backbones import build_backbone
from bench.export import CheckpointError, load_export, load_extras, load_meta, load_weights, save_export
from bench.types import DataError
from methods.external import External, load_external
from tests.test_cli import FAST, run_bench

UNSAFE = "weights_only=False"


class Pet:
    """A custom class: a file holding one is not weights, and a weights-only load refuses it."""

    def __init__(self) -> None:
        self.name = "rex"


def _tiny():
    torch.manual_seed(0)
    return build_backbone("swin_unetr_tiny")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def pickled_object(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "pet": Pet()}, path)


def truncated(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "meta": {}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_legacy(path: Path) -> None:
    """The pre-1.6 format (successive pickles, then raw storages), cut short."""
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def missing(path: Path) -> None:
    pass


#: how each bad file is made, and a phrase of the problem the error must state
BAD = [
    (random_bytes, "is not a PyTorch checkpoint"),
    (empty, "is empty (0 bytes)"),
    (pickled_object, f"contains Python objects other than tensors ({__name__}.Pet); the harness loads weights only"),
    (truncated, "is truncated or corrupt"),
    (truncated_legacy, "is truncated or corrupt"),
    (missing, "does not exist"),
]
IDS = [make.__name__ for make, _ in BAD]


def _clear(msg: str, path: Path, problem: str) -> None:
    assert str(path) in msg, msg
    assert problem in msg, msg
    assert UNSAFE not in msg and "weights_only" not in msg, msg
    assert "\n" not in msg, msg


@pytest.mark.parametrize("make, problem", BAD, ids=IDS)
def test_external_checkpoint_errors_name_the_file_and_the_problem(make, problem, tmp_path):
    path = tmp_path / "released.pt"
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_external(_tiny(), path, "bench")
    assert isinstance(info.value, ValueError)  # what the runner turns into a one-line error (exit 2)
    _clear(str(info.value), path, problem)
    assert str(info.value).startswith(f"external: checkpoint {path} ")
    # the method itself (what the runner constructs) raises the same error
    with pytest.raises(ValueError) as again:
        External(_tiny(), External.Config(checkpoint=str(path), format="bench"))
    assert str(again.value) == str(info.value)


@pytest.mark.parametrize("make, problem", BAD, ids=IDS)
@pytest.mark.parametrize("loader", [load_meta, load_extras, load_export])
def test_a_corrupt_cached_export_names_it_and_how_to_recompute(loader, make, problem, tmp_path):
    run_dir = tmp_path / "runs" / "pretrain" / "simmim3d" / "0123456789abcdef"
    run_dir.mkdir(parents=True)
    path = run_dir / "export.pt"
    make(path)
    with pytest.raises(CheckpointError) as info:
        loader(path)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)  # one line from the CLI
    msg = str(info.value)
    _clear(msg, path, problem)
    assert msg.startswith(f"export {path} ") and msg.endswith(
        f"delete its pretraining directory {run_dir} to recompute it"
    )


def test_an_export_outside_the_runs_cache_gets_no_delete_advice(tmp_path):
    path = tmp_path / "mine.pt"
    random_bytes(path)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as info:
        load_export(path)
    assert "delete" not in str(info.value)


def test_an_export_whose_keys_do_not_match_names_the_file_and_the_keys(tmp_path):
    bb = _tiny()
    path = tmp_path / "e.pt"
    save_export(bb, path, {"method": "random"})
    doc = torch.load(path, weights_only=True)
    dropped = sorted(doc["state_dict"])[0]
    del doc["state_dict"][dropped]
    doc["state_dict"]["head.extra"] = torch.zeros(1)
    torch.save(doc, path)
    with pytest.raises(CheckpointError) as info:
        load_export(path)
    msg = str(info.value)
    assert str(path) in msg and "does not match its backbone 'swin_unetr_tiny'" in msg
    assert f"1 missing key(s): {dropped}" in msg and "1 unexpected key(s): head.extra" in msg


def test_a_file_of_the_wrong_shape_is_named(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=f"export {path} is not an encoder export: .*found list"):
        load_meta(path)
    with pytest.raises(ValueError, match=f"external: {path} is not in the 'bench' layout"):
        load_external(_tiny(), path, "bench")


def test_a_readable_checkpoint_still_loads(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"state_dict": {"w": torch.arange(3)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_weights(path)["state_dict"]["w"], torch.arange(3))
    save_export(_tiny(), tmp_path / "e.pt", {"method": "random"}, extras={"x": torch.ones(2)})
    assert load_meta(tmp_path / "e.pt")["method"] == "random"
    assert torch.equal(load_extras(tmp_path / "e.pt")["x"], torch.ones(2))
    bb, _ = load_export(tmp_path / "e.pt")
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), _tiny().state_dict().values()))


def test_random_bytes_checkpoint_is_one_line_exit_2_end_to_end(data_dir, tmp_path):
    ckpt = tmp_path / "weights.pt"
    random_bytes(ckpt)
    runs = tmp_path / "runs"
    p = run_bench(
        ["method=external", f"checkpoint={ckpt}", "format=bench", "stage=pretrain", f"runs_dir={runs}", *FAST],
        data_dir,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert str(ckpt) in lines[0] and "is not a PyTorch checkpoint" in lines[0]
    assert "Traceback" not in p.stderr and UNSAFE not in p.stderr + p.stdout
    assert not list(runs.rglob("export.pt"))
    assert not (runs / "pretrain").exists()  # the checkpoint is read before the pretraining directory is made


def test_corrupt_cached_export_is_one_line_exit_2_end_to_end(data_dir, tmp_path):
    """The runner reads a cached export's metadata before any transfer: a corrupt one names itself and the
    directory to delete."""
    runs = tmp_path / "runs"
    args = ["method=random", "protocol=linear_probe", f"runs_dir={runs}", *FAST]
    assert run_bench(["stage=pretrain", *args], data_dir).returncode == 0
    (export,) = runs.glob("pretrain/random/*/export.pt")
    random_bytes(export)
    p = run_bench(["stage=transfer", *args], data_dir)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"export {export} is not a PyTorch checkpoint" in lines[0]
    assert f"delete its pretraining directory {export.parent} to recompute it" in lines[0]
    assert UNSAFE not in p.stderr + p.stdout
