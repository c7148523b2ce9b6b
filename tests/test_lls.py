"""LooseLocationSS (methods/lls.py): neighbours, loss terms against hand-computed values, and an end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.backbones import Backbone
from bench.data import Preprocess
from bench.protocols.base import TransferContext
from bench.suites import Cell, Task
from datasets.synthetic import colon as gen
from methods import lls
from tests.test_synthetic_colon import TinyColon

# JS([0.8, 0.2] || [0.4, 0.6]) by hand: m = [0.6, 0.4];
# KL(p||m) = 0.8 ln(4/3) + 0.2 ln(1/2) = 0.0915172; KL(q||m) = 0.4 ln(2/3) + 0.6 ln(3/2) = 0.0810930
JS_HAND = 0.5 * (0.0915172 + 0.0810930)


def _items(pid: str, phases, n_slices: int):
    return [(pid, ph, z) for ph in phases for z in range(n_slices)]


def test_neighbours_are_adjacent_slices_and_other_phases_of_the_same_patient():
    plan = lls.neighbour_plan(("N", "A", "P"), "N")
    assert plan == [("A", 0), ("N", -1), ("N", 1), ("P", 0)]  # §6.1: [A, N-1, N+1, P]
    items = _items("p1", "NAP", 4) + _items("p2", "NP", 3)  # p2 has no arterial phase
    nb = lls.neighbour_indices(items, plan)
    at = {it: i for i, it in enumerate(items)}
    assert nb[at[("p1", "N", 2)]].tolist() == [
        at[("p1", "A", 2)],
        at[("p1", "N", 1)],
        at[("p1", "N", 3)],
        at[("p1", "P", 2)],
    ]
    # volume ends: no z-1 at the first slice, no z+1 at the last, and never the other patient's slice
    assert nb[at[("p1", "N", 0)]][1] == -1 and nb[at[("p1", "N", 3)]][2] == -1
    assert nb[at[("p2", "N", 0)]].tolist() == [-1, -1, at[("p2", "N", 1)], at[("p2", "P", 0)]]
    assert nb[at[("p2", "N", 2)]][2] == -1
    for i, row in enumerate(nb):
        assert all(items[j][0] == items[i][0] for j in row if j >= 0)


def test_other_phase_neighbours_follow_the_slice_match():
    plan = lls.neighbour_plan(("N", "A", "P"), "N")
    items = _items("p1", "NAP", 4)
    at = {it: i for i, it in enumerate(items)}
    match = {"p1": {"A": [1, 2, 3, None], "P": [None, 0, 1, 2]}}
    nb = lls.neighbour_indices(items, plan, match)
    assert nb[at[("p1", "N", 1)]].tolist() == [
        at[("p1", "A", 2)],
        at[("p1", "N", 0)],
        at[("p1", "N", 2)],
        at[("p1", "P", 0)],
    ]
    assert nb[at[("p1", "N", 3)]][0] == -1 and nb[at[("p1", "N", 0)]][3] == -1  # unmatched: no neighbour
    # a patient without a match keeps the same index
    assert lls.neighbour_indices(items, plan, {})[at[("p1", "N", 1)]][0] == at[("p1", "A", 1)]


def test_slice_match_defaults_to_the_identity_and_checks_its_length():
    ann = {"phases": ["N", "P"], "slice_match": {"P": [None, 0, 1]}}
    assert lls.slice_match(ann, "N", 3) == {"N": [0, 1, 2], "P": [None, 0, 1]}
    assert lls.slice_match({"phases": ["N", "A"]}, "N", 2) == {"N": [0, 1], "A": [0, 1]}
    with pytest.raises(ValueError, match="slice_match"):
        lls.slice_match(ann, "N", 4)


def test_colon_data_records_its_per_phase_slice_correspondence(tmp_path):
    from tests.test_synthetic_colon import SMALL

    ann = gen.generate_patient(3, SMALL)["annotation"]
    assert ann["slice_match"] == {ph: list(range(SMALL.slices)) for ph in ann["phases"]}
    ds = TinyColon(cache_dir=tmp_path)
    ds.root.mkdir(parents=True)
    legacy = {k: v for k, v in ann.items() if k != "slice_match"}  # a file written before the field existed
    (ds.root / "c009.json").write_text(json.dumps(legacy))
    assert ds.annotation("c009")["slice_match"] == ann["slice_match"]


def test_lesion_cell_and_loopback_mask_cover_the_predicted_cell():
    assert lls.lesion_cell((0.51, 0.99), (4, 4)) == (2, 3)
    assert lls.lesion_cell(None, (4, 4)) == (-1, -1)
    p = torch.full((1, 2, 4, 4), 0.5)
    p[0, 1, 1, 2], p[0, 0, 1, 2] = 0.9, 0.1
    cells = lls.argmax_cells(p)
    assert cells.tolist() == [[1, 2]]
    mask = lls.loopback_mask(cells, (4, 4), (16, 16))[0, 0]
    expect = torch.ones(16, 16)
    expect[4:8, 8:12] = 0
    assert torch.equal(mask, expect)
    # sizes not divisible by the grid: the cells still tile the image exactly once
    cover = torch.zeros(10, 10)
    for i in range(3):
        for j in range(3):
            cover += 1 - lls.loopback_mask(torch.tensor([[i, j]]), (3, 3), (10, 10))[0, 0]
    assert torch.equal(cover, torch.ones(10, 10))


def test_js_divergence_equals_the_hand_computed_value():
    p = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1)
    q = torch.tensor([0.4, 0.6]).view(1, 2, 1, 1)
    assert lls.js_divergence(p, q).item() == pytest.approx(JS_HAND, abs=1e-6)
    assert lls.js_divergence(q, p).item() == pytest.approx(JS_HAND, abs=1e-6)
    assert lls.js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)


def _map(h=5, w=5, hot=(2, 2)):
    p = torch.zeros(1, 2, h, w)
    p[0, 0], p[0, 1] = 0.8, 0.2
    p[0, :, hot[0], hot[1]] = torch.tensor([0.1, 0.9])
    return p


def test_location_consistency_ignores_the_3x3_lesion_neighbourhood():
    main = _map()
    nb = main.clone()
    nb[0, :, 1:4, 1:4] = torch.tensor([0.4, 0.6]).view(2, 1, 1)  # changes inside the 3x3 only
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert lls.location_consistency(main, nb[:, None], valid).item() == pytest.approx(0.0, abs=1e-7)
    nb[0, :, 0, 4] = torch.tensor([0.4, 0.6])  # one cell outside: [0.8, 0.2] vs [0.4, 0.6]
    assert lls.location_consistency(main, nb[:, None], valid).item() == pytest.approx(JS_HAND / 25, abs=1e-6)
    # a missing neighbour (volume end, absent phase) is left out of the mean, not counted as agreement
    two = torch.stack([nb[0], torch.rand(2, 5, 5)])[None]
    assert lls.location_consistency(main, two, torch.tensor([[True, False]])).item() == pytest.approx(
        JS_HAND / 25, abs=1e-6
    )
    # radius 0 ignores only the argmax cell
    nb2 = main.clone()
    nb2[0, :, 1, 1] = torch.tensor([0.4, 0.6])
    assert lls.location_consistency(main, nb2[:, None], valid, radius=0).item() == pytest.approx(JS_HAND / 25, abs=1e-6)


def test_patch_loss_terms_by_hand():
    logits = torch.zeros(2, 2, 3, 3)  # p = 0.5 everywhere
    y = torch.tensor([0, 1])
    cells = torch.tensor([[-1, -1], [1, 1]])
    # negative: CE(0.5) = ln 2; the single positive is unsupervised at ratio 0.25 (floor(0.25) = 0): 0.5 * 0.5
    assert lls.patch_loss(logits, y, cells, 0.25).item() == pytest.approx(math.log(2) + 0.25, abs=1e-6)
    # ratio 1: the positive is supervised; a one-hot target with uniform logits is still CE = ln 2 per cell
    assert lls.patch_loss(logits, y, cells, 1.0).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    sharp = torch.zeros(1, 2, 3, 3)
    sharp[0, 0] = 10.0
    sharp[0, :, 1, 1] = torch.tensor([-10.0, 10.0])
    assert lls.patch_loss(sharp, torch.tensor([1]), torch.tensor([[1, 1]]), 1.0).item() < 1e-3


class TinyConv(Backbone):
    """A 2D backbone with the harness interface (encode -> [B, C, h, w] maps, pooled) and stride 8."""

    spatial_dims = 2
    in_channels = 1
    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1)
        )

    def encode(self, x, patch_hook=None):
        return [self.net(x)]


def test_protocol_runs_end_to_end_on_a_tiny_colon_set(tmp_path, monkeypatch):
    import bench.export

    torch.manual_seed(0)
    ds = TinyColon(cache_dir=tmp_path / "data")
    ds.prepare(progress=False)
    monkeypatch.setattr(bench.export, "load_export", lambda path, **kw: (TinyConv(), {}))
    task = Task(name="crc_slice", dataset="colon", kind="classification", protocols=("lls_two_stage",), metric="auroc")
    roi = (48, 48)
    ctx = TransferContext(
        export_path=tmp_path / "export.pt",
        dataset=ds,
        cell=Cell(task, "lls_two_stage", 1.0, 0),
        run_dir=tmp_path / "run",
        device=torch.device("cpu"),
        preprocess=Preprocess(-140.0, 260.0, size=roi),
        roi=roi,
        steps=6,
        batch_size=8,
        progress=False,
    )
    proto = lls.LLSTwoStage(lls.LLSTwoStage.make_config({"paper_sampling": False, "annotation_ratio": 1.0}))
    res = proto.run(ctx)
    set_rows = [r for r in res.rows if r["case"] == "__set__"]
    metrics = {r["metric"]: r for r in set_rows}
    assert {"auroc", "accuracy", "patient_auroc"} <= set(metrics) <= {"auroc", "accuracy", "patient_auroc", "loc_acc"}
    for r in set_rows:
        assert r["class"] == -1 and 0.0 <= r["value"] <= 1.0
    assert res.summary == {m: r["value"] for m, r in metrics.items()}
    # every other row is one test slice's stored prediction: the main-phase test records, each once, and
    # together they give back the stored slice AUROC (what a leaderboard's image bootstrap resamples)
    pred = {m: {r["case"]: r["value"] for r in res.rows if r["metric"] == m} for m in ("pred_score", "pred_target")}
    assert len(res.rows) == len(set_rows) + 2 * len(pred["pred_score"])
    assert all(r["class"] == 1 for r in res.rows if r["case"] != "__set__")
    assert sorted(pred["pred_score"]) == sorted(pred["pred_target"]) == sorted(r.id for r in ds.records("test"))
    ids = sorted(pred["pred_score"])
    labels = {r.id: r.classes[0] for r in ds.records("test")}
    assert [pred["pred_target"][i] for i in ids] == [labels[i] for i in ids]
    from sklearn.metrics import roc_auc_score

    assert metrics["auroc"]["value"] == pytest.approx(
        roc_auc_score([labels[i] for i in ids], [pred["pred_score"][i] for i in ids])
    )
    # stage 2 really trained every term: its log holds the loss terms, the loopback and L_tm included
    logged = [json.loads(line) for line in (tmp_path / "run" / "stage2" / "scalars.jsonl").read_text().splitlines()]
    keys = set().union(*logged)
    assert {f"transfer/lls_two_stage/stage2/{k}" for k in ("l_cls", "l_patch", "l_tm", "l_loop")} <= keys
    assert (tmp_path / "run" / "stage1" / "last.ckpt").is_file()


def test_evaluate_patient_and_localisation_metrics_by_hand():
    probs = np.array([0.9, 0.6, 0.1, 0.2, 0.7, 0.3])
    patients = ["a", "a", "a", "b", "b", "b"]
    y = np.array([1, 1, 0, 0, 0, 0])
    boxes = [(0.0, 0.0, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9), None, None, None, None]
    cells = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]])
    rows = {r["metric"]: r["value"] for r in lls.evaluate(probs, cells, patients, y, boxes, (4, 4))}
    # slice AUROC: positives 0.9, 0.6 vs negatives 0.1, 0.2, 0.7, 0.3 -> (4 + 3) / 8
    assert rows["auroc"] == pytest.approx(7 / 8)
    assert rows["accuracy"] == pytest.approx(5 / 6)  # 0.7 is the only mistake
    assert rows["patient_auroc"] == pytest.approx(1.0)  # 2 positive slices (a) vs 1 (b)
    assert rows["loc_acc"] == pytest.approx(0.5)  # cell (0, 0) overlaps the first box only
    ids = [f"s{i}" for i in range(6)]
    with_ids = lls.evaluate(probs, cells, patients, y, boxes, (4, 4), ids=ids)
    assert [r for r in with_ids if r["case"] == "__set__"] == lls.evaluate(probs, cells, patients, y, boxes, (4, 4))
    assert [(r["case"], r["value"]) for r in with_ids if r["metric"] == "pred_score"] == list(zip(ids, probs))
    assert [(r["case"], r["value"]) for r in with_ids if r["metric"] == "pred_target"] == list(zip(ids, y))
    with pytest.raises(ValueError, match="5 image ids"):
        lls.evaluate(probs, cells, patients, y, boxes, (4, 4), ids=ids[:5])


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="annotation_ration"):
        lls.LLSTwoStage.make_config({"annotation_ration": 0.5})
    assert gen.GENERATOR_VERSION


def test_yaml_defaults_equal_the_config_dataclass():
    from pathlib import Path

    from omegaconf import OmegaConf

    from bench.protocols.base import protocol_values

    path = Path(__file__).resolve().parent.parent / "conf" / "protocols" / "lls_two_stage.yaml"
    values = protocol_values(OmegaConf.to_container(OmegaConf.load(path)), "classification")
    cfg = lls.LLSTwoStage.make_config(values)
    cfg.phase_order = tuple(cfg.phase_order)
    assert cfg == lls.LLSTwoStage.Config()


def test_release_corner_cell_reads_x_as_the_row():
    # box (r0, c0, r1, c1) = (0.1, 0.6, 0.3, 0.9): the release's (x_min, y_min) = (0.6, 0.1) -> cell (2, 0) of 4 x 4
    assert lls.corner_cell((0.1, 0.6, 0.3, 0.9), (4, 4)) == (2, 0)
    assert lls.supervised_cell((0.2, 0.75), (0.1, 0.6, 0.3, 0.9), (4, 4), "centroid") == (0, 3)
    assert lls.corner_cell(None, (4, 4)) == (-1, -1)


def test_stage2_batches_carry_aligned_neighbours_with_the_main_slice_augmentation():
    class Data:  # a SliceSet stand-in: items N0 N1 N2 P0 P1 P2 of one patient, item i filled with the value i + 1
        items = _items("p1", "NP", 3)
        images = torch.arange(1.0, 7.0).view(6, 1, 1, 1).expand(6, 1, 4, 4).clone()
        y = torch.tensor([1, 0, 0, 1, 0, 0])
        locs = [(0.1, 0.9), None, None, (0.1, 0.9), None, None]
        boxes = [(0.0, 0.8, 0.2, 1.0), None, None, (0.0, 0.8, 0.2, 1.0), None, None]

    nb = lls.neighbour_indices(Data.items, lls.neighbour_plan(("N", "A", "P"), "N"))
    batch = next(iter(lls._Batches(Data(), [0, 1, 2], 3, seed=0, grid=(2, 2), nb=nb, augment="intensity")))
    x, nbx, valid = batch["x"][:, 0, 0, 0].tolist(), batch["nb"][:, :, 0, 0, 0].tolist(), batch["nb_valid"]
    assert valid[:, 0].sum() == 0  # no arterial phase: that neighbour is absent, zeroed
    assert torch.all(batch["nb"][:, 0] == 0)
    for b in range(3):
        # main = s (i + 1) + t and its P neighbour = s (i + 4) + t under the same intensity transform (s, t)
        s_ = (nbx[b][3] - x[b]) / 3.0
        assert 0.9 - 1e-5 <= s_ <= 1.1 + 1e-5
        if valid[b, 1]:
            assert nbx[b][1] == pytest.approx(x[b] - s_, abs=1e-5)  # N z-1
        if valid[b, 2]:
            assert nbx[b][2] == pytest.approx(x[b] + s_, abs=1e-5)  # N z+1
        assert bool(valid[b, 1]) + bool(valid[b, 2]) >= 1
    assert sorted(valid[:, 1].tolist()) == [False, True, True] and sorted(valid[:, 2].tolist()) == [False, True, True]
    for cell, lab in zip(batch["cell"].tolist(), batch["y"].tolist()):
        assert cell == ([0, 1] if lab else [-1, -1])  # lesion_cell((0.1, 0.9), (2, 2))
