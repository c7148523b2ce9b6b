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
def test_each_case_is_inferred_once_per_validation_and_once_for_the_test(data_dir, tmp_path, monkeypatch,
                                                                         evaluations, expected_validations):
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
    ctx = TransferContext(export_path=tmp_path / "export.pt", dataset=ds, cell=Cell(task, "finetune", 1.0, 0),
                          run_dir=tmp_path / "run", device=torch.device("cpu"), preprocess=Preprocess(-175.0, 250.0),
                          roi=(64, 64, 64), steps=2, batch_size=1, progress=False, evaluations=evaluations)
    res = cls(cls.make_config({"eval_every": 0} if evaluations else {"eval_every": 1})).run(ctx)
    n_val, n_test = len(ds.records("val")), len(ds.records("test"))
    assert len(ds.info.labels) > 2                       # several classes per case: a per-class call would show
    assert len(calls) == expected_validations * n_val + n_test, (len(calls), n_val, n_test)
    assert {r["case"] for r in res.rows} == {r.id for r in ds.records("test")}
