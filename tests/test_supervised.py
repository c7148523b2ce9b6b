"""``supervised``: the positive control that pretrains with the corpus's labels, and the plumbing that gives it them.

The corpus labels of the synthetic abdomen are the generator's own (checked against a direct call of it), the
images stay untouched; a suite whose corpus has no labels is one line before any data work; the method learns
(its DiceCE loss falls in a few steps) and its crops keep the label on the image's voxels; every other method sees
the samples, and keeps the pretraining identity, it had before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bench.backbones import build_backbone
from bench.data import PretrainDataset
from bench.plan import compose
from bench.registry import DATASETS, METHODS
from bench.types import DataError, StepInfo
from datasets.abdomen import SEED_OFFSET, Abdomen, AbdomenShuffled
from datasets.synthetic import abdomen as gen
from datasets.synthetic.cache import sha256

from tests.test_cli import FAST, run_bench

CORPUS = ["img1001", "img1002"]


def _tiny(cls):
    """The abdomen adapter on a two-volume corpus (the committed split has 200)."""

    class Tiny(cls):
        def split_ids(self, split: str) -> list[str]:
            return list(CORPUS) if split == "pretrain" else []

    return Tiny


@pytest.mark.parametrize("cls", [Abdomen, AbdomenShuffled], ids=["abdomen", "abdomen_shuffled"])
def test_abdomen_corpus_labels_are_the_generators_and_leave_the_images_alone(cls, tmp_path):
    ds = _tiny(cls)(root=tmp_path / "abd")
    ds.prepare(progress=False)
    assert [r.label for r in ds.records("pretrain")] == [None, None]  # the unlabelled corpus, as before
    images = {r.id: Path(r.image) for r in ds.records("pretrain")}
    before = {cid: (sha256(p), p.stat().st_mtime_ns) for cid, p in images.items()}
    manifest = (tmp_path / "abd" / "manifest.json").read_text()

    recs = ds.corpus_with_labels("pretrain", progress=False)
    assert [r.id for r in recs] == CORPUS and [Path(r.image) for r in recs] == list(images.values())
    for rec in recs:
        assert Path(rec.label) == tmp_path / "abd" / "labelsCorpus" / f"label{rec.id[3:]}.nii.gz"
        # the independent reference: the generator itself, at the seed the image was generated from
        _image, label, affine = gen.generate_subject(SEED_OFFSET + int(rec.id[3:]), layout=cls.layout_name)
        written = nib.load(rec.label)
        assert np.array_equal(np.asarray(written.dataobj), label) and written.get_data_dtype() == label.dtype
        assert np.allclose(written.affine, affine) and np.allclose(written.affine, nib.load(rec.image).affine)
        sample = ds.load(rec)  # the adapter reads the pair (shapes and affines agree)
        assert sample["label"].shape == sample["image"].shape[1:] and sample["label"].max() > 0
    after = {cid: (sha256(p), p.stat().st_mtime_ns) for cid, p in images.items()}
    assert after == before and (tmp_path / "abd" / "manifest.json").read_text() == manifest
    # generated once: a second call reads them
    stamps = [Path(r.label).stat().st_mtime_ns for r in recs]
    again = ds.corpus_with_labels("pretrain", progress=False)
    assert [Path(r.label).stat().st_mtime_ns for r in again] == stamps


def test_a_corpus_without_labels_is_one_data_error_naming_the_dataset(tmp_path):
    ds = DATASETS.get("lits")(root=tmp_path)
    assert not ds.has_corpus_labels
    with pytest.raises(DataError, match=r"dataset 'lits' has no labels for its pretraining corpus"):
        ds.corpus_with_labels("pretrain")


def test_the_plan_refuses_a_corpus_without_labels(tmp_path):
    from bench.plan import UserError, make_plan

    with pytest.raises(UserError) as e:
        make_plan(compose(["method=supervised", "suite=lits", f"runs_dir={tmp_path}", "device=cpu"]))
    msg = str(e.value)
    assert "method 'supervised'" in msg and "dataset 'lits'" in msg and "abdomen, abdomen_shuffled, brain" in msg
    assert "\n" not in msg
    make_plan(compose(["method=supervised", "suite=abdomen", f"runs_dir={tmp_path}", "device=cpu"]))


def test_cli_refuses_a_corpus_without_labels_in_one_line_before_any_work(data_dir, tmp_path):
    runs = tmp_path / "runs"
    p = run_bench(["method=supervised", "suite=lits", f"runs_dir={runs}", "progress=false", "device=cpu"], data_dir)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert "dataset 'lits'" in lines[0] and "labelled pretraining corpus" in lines[0]
    assert "Traceback" not in p.stderr and not (data_dir / "lits").exists()  # before any data work
    assert not runs.exists() or {q.name for q in runs.iterdir()} <= {"hydra"}


@pytest.mark.slow  # about a minute on 2 cores: pretraining and a linear probe of 2 steps each
def test_smoke_end_to_end_through_the_cli(data_dir, tmp_path):
    runs = tmp_path / "runs"
    p = run_bench(["method=supervised", "protocol=linear_probe", f"runs_dir={runs}", *FAST], data_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    (export,) = runs.glob("pretrain/supervised/*/export.pt")
    saved = torch.load(export, weights_only=True)
    assert saved["meta"]["method"] == "supervised" and saved["meta"]["pretrain_steps"] == 2
    assert not any(k.startswith("head") for k in saved["state_dict"])  # the backbone only
    con = sqlite3.connect(runs / "results.sqlite")
    assert con.execute("SELECT method, protocol, status FROM cells").fetchall() == [
        ("supervised", "linear_probe", "complete")
    ]


def _method(**cfg):
    torch.manual_seed(0)
    cls = METHODS.get("supervised")
    m = cls(build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1)), cls.make_config(cfg))
    m.bind_labels({0: "background", 1: "a", 2: "b"})
    return m


def _volume(shape=(48, 40, 36), seed=0):
    """Voxel classes 0..2 at random (so any shift between image and label shows), image = class / 2."""
    label = np.random.default_rng(seed).integers(0, 3, shape).astype(np.uint8)
    return label[None].astype(np.float32) / 2, label


def test_views_crop_the_label_on_the_images_voxels():
    m = _method(intensity_aug=False)
    image, label = _volume()
    rng = np.random.default_rng(1)
    for roi in ((32, 32, 32), (64, 32, 32)):  # inside the volume, and padded along one axis
        v = m.views({"image": image, "roi": roi, "label": label}, rng)
        assert v["image"].shape == (1, *roi) and v["label"].shape == (1, *roi) and v["label"].dtype == torch.int64
        assert torch.equal(v["label"], torch.round(v["image"] * 2).long())
    with pytest.raises(ValueError, match="no label map"):
        m.views({"image": image, "roi": (32, 32, 32)}, rng)


def test_positive_crops_are_centred_on_foreground():
    m = _method(pos_fraction=1.0, intensity_aug=False)
    label = np.zeros((96, 96, 96), np.uint8)
    label[80:84, 8:12, 60:64] = 2  # one small organ far from the centre
    rng = np.random.default_rng(0)
    for _ in range(5):
        v = m.views({"image": label[None].astype(np.float32), "roi": (32, 32, 32), "label": label}, rng)
        assert (v["label"] == 2).any()


def test_a_few_steps_lower_the_dice_ce_loss():
    """The positive control learns: a few AdamW steps on one volume lower DiceCE on a fixed batch of its crops."""
    m = _method(intensity_aug=False)
    label = np.zeros((72, 40, 40), np.uint8)
    label[4:30, 6:30, 8:34] = 1
    label[36:66, 10:26, 12:28] = 2
    image = (label[None] / 2).astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, (1, 72, 40, 40))
    rng = np.random.default_rng(0)
    # 64 x 32 x 32: the smallest ROI whose bottleneck (stride 32) keeps more than one voxel for instance norm
    batch = torch.utils.data.default_collate(
        [m.views({"image": image.astype(np.float32), "roi": (64, 32, 32), "label": label}, rng)]
    )
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m.train()
    losses = []
    for step in range(5):
        out = m.training_step(batch, StepInfo(step, 5))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    with torch.no_grad():
        final = m.training_step(batch, StepInfo(5, 5)).loss.item()
    assert final < 0.9 * losses[0], losses + [final]
    # the export is the backbone alone (no head): what every protocol loads
    assert m.export_encoder() is m.backbone


def test_the_head_is_built_for_the_bound_label_map():
    m = _method()
    assert m.head is not None and m.head.out_channels == 3
    m.bind_labels({k: str(k) for k in range(14)})  # BTCV's 13 organs + background
    assert m.head.out_channels == 14 and "head.weight" in m.state_dict()
    with pytest.raises(ValueError, match="background"):
        m.bind_labels({0: "background"})
    with pytest.raises(ValueError, match="pos_fraction"):
        METHODS.get("supervised").make_config({"pos_fraction": 1.5})
    unbound = METHODS.get("supervised")(build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1)))
    with pytest.raises(RuntimeError, match="bind_labels"):
        unbound.training_step({"image": torch.zeros(1, 1, 32, 32, 32)}, StepInfo(0, 1))


def test_other_methods_get_no_label_and_the_same_draws():
    vols = [np.full((1, 8, 8, 8), float(i), np.float32) for i in range(4)]
    labels = [np.full((8, 8, 8), i, np.uint8) for i in range(4)]
    seen: list[dict] = []

    def views(sample, rng):
        seen.append(sample)
        return {"x": torch.tensor(float(rng.random()))}

    plain = [PretrainDataset(vols, (8, 8, 8), views, samples=6, seed=3)[i]["x"] for i in range(6)]
    assert all(set(s) == {"image", "roi"} for s in seen)
    which = [int(s["image"].flat[0]) for s in seen]
    seen.clear()
    labelled = [PretrainDataset(vols, (8, 8, 8), views, samples=6, seed=3, labels=labels)[i]["x"] for i in range(6)]
    assert all(set(s) == {"image", "roi", "label"} for s in seen)
    assert [int(s["image"].flat[0]) for s in seen] == which and all(
        int(s["label"].flat[0]) == w for s, w in zip(seen, which)
    )
    assert plain == labelled  # the labels change neither the volume drawn nor the views' random numbers


def test_corpus_labels_reach_only_the_method_that_asks(data_dir, tmp_path):
    """The runner's corpus: label maps for a method that pretrains with labels (the smoke corpus's train labels,
    preprocessed through the disk cache), none for any other; the same volumes and content hashes either way."""
    from bench import runner

    plan = runner.make_plan(
        compose(["method=supervised", "suite=smoke", f"runs_dir={tmp_path}", "device=cpu", "progress=false"])
    )
    volumes, hashes, labels = runner.load_corpus(plan, 1, True)
    plain_vols, plain_hashes, none = runner.load_corpus(plan, 1, False)
    assert none is None and hashes == plain_hashes and len(labels) == len(volumes) == len(plain_vols)
    assert all(np.array_equal(a, b) for a, b in zip(volumes, plain_vols))
    ds = DATASETS.get("smoke")()
    for vol, lab, rec in zip(volumes, labels, ds.records("train")):
        assert lab.shape == vol.shape[1:] and lab.dtype == np.uint8
        assert np.array_equal(lab, ds.load(rec)["label"])  # smoke's corpus is its train images: their labels


def test_the_pretraining_identity_of_other_methods_is_unchanged(tmp_path):
    """No key about labels enters the pretraining identity (its hash keys every cached export): the keys are those
    it had before methods could pretrain with labels."""
    from bench import runner

    for method in ("simmim3d", "supervised"):
        plan = runner.make_plan(compose([f"method={method}", "suite=abdomen", f"runs_dir={tmp_path}", "device=cpu"]))
        assert set(runner.pretrain_identity(plan)) == {
            "method",
            "method_cfg",
            "train",
            "backbone",
            "backbone_kwargs",
            "roi",
            "steps",
            "batch",
            "corpus",
            "corpus_splits",
            "corpus_split_hash",
            "preprocess",
            "seed",
            "suite_version",
        }
