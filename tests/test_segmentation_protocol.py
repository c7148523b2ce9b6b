"""Segmentation transfer on the generated smoke suite, at a few steps."""

from __future__ import annotations

import pytest
import torch

from bench.backbones import build_backbone
from bench.data import Preprocess
from bench.export import save_export
from bench.protocols.base import TransferContext, resolve_protocol
from bench.registry import DATASETS, SUITES
from bench.suites import Cell


@pytest.mark.parametrize("evaluations, expected_validations", [(None, 2), (1, 1)])
def test_each_case_is_inferred_once_per_validation_and_once_for_the_test(
    data_dir, tmp_path, monkeypatch, evaluations, expected_validations
):
    """Sliding-window inference is the cost of validation on a CPU: one call per case, not one per class; the
    budget's ``transfer.evaluations`` sets how many validations run when the protocol leaves eval_every at 0."""
    import monai.inferers

    calls = []
    real = monai.inferers.sliding_window_inference

    def counting(inputs, *args, **kwargs):
        calls.append(tuple(inputs.shape))
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", counting)
    ds = DATASETS.get("smoke")(cache_dir=str(data_dir))
    ds.prepare(progress=False)
    torch.manual_seed(0)
    save_export(build_backbone("swin_unetr_tiny"), tmp_path / "export.pt", {"method": "random"})
    task = SUITES.get("smoke").task("seg3")
    cls = resolve_protocol("finetune", "segmentation")
    ctx = TransferContext(
        export_path=tmp_path / "export.pt",
        dataset=ds,
        cell=Cell(task, "finetune", 1.0, 0),
        run_dir=tmp_path / "run",
        device=torch.device("cpu"),
        preprocess=Preprocess(-175.0, 250.0),
        roi=(64, 64, 64),
        steps=2,
        batch_size=1,
        progress=False,
        evaluations=evaluations,
    )
    res = cls(cls.make_config({"eval_every": 0} if evaluations else {"eval_every": 1})).run(ctx)
    n_val, n_test = len(ds.records("val")), len(ds.records("test"))
    assert len(ds.info.labels) > 2  # several classes per case: a per-class call would show
    assert len(calls) == expected_validations * n_val + n_test, (len(calls), n_val, n_test)
    assert {r["case"] for r in res.rows} == {r.id for r in ds.records("test")}


def _crops_containing(positive_crops: str, label_value: int, n: int = 400) -> float:
    """Share of training crops (all positive) that contain ``label_value`` on a case with a 16^3 organ 1 and a
    2^3 organ 2 in opposite corners of a 48^3 volume."""
    import numpy as np

    from bench.data import SegTrainDataset

    label = np.zeros((48, 48, 48), dtype=np.int64)
    label[4:20, 4:20, 4:20] = 1
    label[42:44, 42:44, 42:44] = 2
    case = {"image": np.zeros((1, 48, 48, 48), np.float32), "label": label}
    ds = SegTrainDataset([case], (16, 16, 16), samples=n, pos_fraction=1.0, positive_crops=positive_crops)
    torch.manual_seed(0)
    return float(np.mean([(ds[i]["label"] == label_value).any().item() for i in range(n)]))


def test_class_positive_crops_see_a_small_organ_as_often_as_a_large_one():
    # foreground voxels: 4096 of organ 1, 8 of organ 2 -> a crop centred on organ 2 about 8 / 4104 of the time
    assert _crops_containing("foreground", 2) < 0.02
    share = _crops_containing("class", 2)
    assert 0.4 < share < 0.6  # organ 2 drawn with probability 1/2, and its crop contains it
    assert _crops_containing("class", 1) > 0.4


def test_unknown_positive_crops_is_a_clear_config_error():
    cls = resolve_protocol("finetune", "segmentation")
    assert cls.make_config({"positive_crops": "class"}).positive_crops == "class"
    with pytest.raises(ValueError, match="positive_crops must be one of foreground, class"):
        cls.make_config({"positive_crops": "organ"})
