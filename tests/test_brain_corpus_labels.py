"""The brain corpus's label maps: the pretraining subjects' lesion masks, for ``supervised`` (a positive control).

The masks are the generator's own (checked against a direct render of each subject), the images and their manifest
stay untouched, a second call renders nothing; the plan of ``method=supervised suite=brain`` is accepted, and the
method's head is built for the lesion map (background, lesion), not for the ``brain`` task's three classes. The
corpus is cut to two subjects (the committed split has 300, about 2 minutes to render).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.plan import compose, make_plan
from bench.registry import DATASETS, METHODS
from bench.types import corpus_label_map
from datasets import brain as br
from datasets.synthetic import brain as gen
from datasets.synthetic.cache import sha256

# a patient (a lesion) and a healthy subject (an empty mask): both kinds of corpus mask
CORPUS = ["brain0241", "brain0242"]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(br._SynthBrain, "split_ids", lambda self, split: list(CORPUS) if split == "pretrain" else [])


@pytest.mark.parametrize("name", ["brain", "brain_lesion"])
def test_corpus_masks_are_the_generators_and_leave_the_images_alone(name, tiny, tmp_path, monkeypatch):
    ds = DATASETS.get(name)(cache_dir=tmp_path)
    ds.prepare(progress=False)
    assert [r.label for r in ds.records("pretrain")] == [None, None]  # the unlabelled corpus, as before
    images = {r.id: Path(r.image) for r in ds.records("pretrain")}
    before = {cid: (sha256(p), p.stat().st_mtime_ns) for cid, p in images.items()}
    manifest = (ds.root / "manifest.json").read_text()

    recs = ds.corpus_with_labels("pretrain", progress=False)
    assert [r.id for r in recs] == CORPUS and [Path(r.image) for r in recs] == list(images.values())
    lesions = []
    for rec in recs:
        assert Path(rec.label) == ds.root / "labelsCorpus" / f"{rec.id}.nii.gz"
        # the independent reference: the generator itself, at the seed the image was generated from
        subj = gen.generate_subject(br.SEED_OFFSET + int(rec.id.removeprefix("brain")))
        written = nib.load(rec.label)
        assert np.array_equal(np.asarray(written.dataobj), subj["lesion"])
        assert written.get_data_dtype() == subj["lesion"].dtype
        assert np.allclose(written.affine, subj["affine"]) and np.allclose(written.affine, nib.load(rec.image).affine)
        sample = ds.load(rec)  # the adapter reads the pair (shapes and affines agree)
        assert sample["label"].shape == sample["image"].shape[1:]
        assert set(np.unique(sample["label"]).tolist()) <= set(gen.LABELS)
        lesions.append(bool(sample["label"].any()))
        assert lesions[-1] == (gen.class_of(br.seed_of(rec.id)) != 0)  # the mask agrees with the subject's class
    assert lesions == [True, False]  # the reference compared one mask with a lesion, not two empty ones
    after = {cid: (sha256(p), p.stat().st_mtime_ns) for cid, p in images.items()}
    assert after == before and (ds.root / "manifest.json").read_text() == manifest
    # generated once: a second call renders nothing and reads the same files
    stamps = [Path(r.label).stat().st_mtime_ns for r in recs]
    rendered: list[tuple] = []
    real = gen.generate_subject
    monkeypatch.setattr(gen, "generate_subject", lambda *a, **k: rendered.append(a) or real(*a, **k))
    again = ds.corpus_with_labels("pretrain", progress=False)
    assert rendered == [] and again == recs
    assert [Path(r.label).stat().st_mtime_ns for r in again] == stamps


def test_a_corrupted_corpus_mask_is_rendered_again(tiny, tmp_path):
    ds = DATASETS.get("brain")(cache_dir=tmp_path)
    ds.prepare(progress=False)
    rec = ds.corpus_with_labels("pretrain", progress=False)[0]
    want = np.asarray(nib.load(rec.label).dataobj)
    Path(rec.label).write_bytes(b"truncated")
    ds.corpus_with_labels("pretrain", progress=False)
    assert np.array_equal(np.asarray(nib.load(rec.label).dataobj), want)


def test_the_corpus_label_map_is_the_lesion_map_and_the_tasks_keep_theirs():
    for name in ("brain", "brain_lesion"):
        assert DATASETS.get(name).has_corpus_labels
        assert corpus_label_map(DATASETS.get(name)) == {0: "background", 1: "lesion"} == gen.LABELS
    # the classification task and the segmentation task read their own maps, as before
    assert dict(DATASETS.get("brain").info.labels) == {0: "none", 1: "right", 2: "left"}
    assert dict(DATASETS.get("brain_lesion").info.labels) == gen.LABELS
    # a corpus that names no map of its own: its dataset's
    assert corpus_label_map(DATASETS.get("abdomen")) == dict(DATASETS.get("abdomen").info.labels)


def test_the_plan_accepts_supervised_on_brain(tmp_path):
    plan = make_plan(compose(["method=supervised", "suite=brain", f"runs_dir={tmp_path}", "device=cpu"]))
    assert plan.method == "supervised" and plan.suite.pretrain_dataset == "brain"
    assert not (tmp_path / "data").exists()  # planning renders nothing


def test_supervised_gets_a_two_class_head_on_brain(tiny, tmp_path, monkeypatch):
    """The runner binds the corpus's label map before training: on brain the head has 2 channels (background,
    lesion). Pretraining stops at the corpus check, after the head is built, so no volume is rendered."""
    from bench import runner

    bound: list[dict[int, str]] = []
    cls = METHODS.get("supervised")
    real_bind = cls.bind_labels

    def bind(self, labels):
        bound.append(labels)
        real_bind(self, labels)
        heads.append((self.head.out_channels, self.encoder_head.out_channels))

    class Stop(Exception):
        pass

    def stop(plan):
        raise Stop

    heads: list[tuple[int, int]] = []
    monkeypatch.setattr(cls, "bind_labels", bind)
    monkeypatch.setattr(runner, "corpus_problems", stop)
    plan = runner.make_plan(
        compose(
            [
                "method=supervised",
                "suite=brain",
                f"runs_dir={tmp_path / 'runs'}",
                f"data.cache_dir={tmp_path / 'data'}",
                "device=cpu",
                "progress=false",
                "+budget.backbone.kwargs.depths=[1,1,1,1]",
            ]
        )
    )
    with pytest.raises(Stop):
        runner.pretrain(plan)
    assert bound == [{0: "background", 1: "lesion"}] and heads == [(2, 2)]
