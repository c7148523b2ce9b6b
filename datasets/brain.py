"""``brain`` and ``brain_lesion``: the embedded synthetic brain-symmetry suite (SynthBrainSym, DATA.md C.3).

The generator (datasets/synthetic/brain.py) writes ``imagesTr/<id>.nii.gz`` (int16 T1) and
``labelsTr/<id>.nii.gz`` (lesion mask). Two adapters share one split file (``datasets/splits/brain.json``):

* ``brain``: 3-class classification none / right / left (``Record.classes`` = (class,), from
  ``class_of(seed)`` without rendering; ``Record.label`` None);
* ``brain_lesion``: binary lesion segmentation of the same subjects (labels 0 background, 1 lesion).

Split: subjects 1..240 are labelled, split by ``positional_split`` (train 168 / val 24 / test 48);
``pretrain`` = 300 further unlabelled subjects (241..540); ``volume_labels`` gives each its health label (1 no
lesion, 0 a lesion; SA-Swin's official symmetry target), which only a method that asks for it sees. Case
``brainNNNN`` has generator seed ``SEED_OFFSET + NNNN``. About 0.38 s per subject
(``datasets.synthetic.brain.measure``), so the whole set takes about 3.5 minutes once.

The corpus's label maps (``corpus_with_labels``, for a method that pretrains with labels: ``supervised``) are the
pretraining subjects' lesion masks, labelled with ``gen.LABELS`` (``corpus_labels``) on either adapter: rendered on
first use into ``labelsCorpus/<id>.nii.gz`` (about 2 minutes once for the 300 subjects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.registry import DATASETS, SUITES
from bench.suites import PROBES_3D, Suite, Task, protocols_added
from datasets.base import DatasetAdapter, DatasetInfo, Record, positional_split
from datasets.synthetic import brain as gen
from datasets.synthetic.cache import corpus_label_records, ensure_generated

SEED_OFFSET = 200_000
N_LABELLED = 240
N_PRETRAIN = 300
# the generator stores WM at 700..1300 (int16) and the bright lesion ring a little above; 0 is background
PREPROCESSING = {"a_min": 0.0, "a_max": 1600.0}


def case_id(n: int) -> str:
    return f"brain{n:04d}"


def seed_of(cid: str) -> int:
    return SEED_OFFSET + int(cid[5:])


def build_split() -> dict:
    """The committed split document (regenerate with ``python -m datasets.brain``)."""
    splits = positional_split([case_id(n) for n in range(1, N_LABELLED + 1)])
    splits["pretrain"] = [case_id(n) for n in range(N_LABELLED + 1, N_LABELLED + N_PRETRAIN + 1)]
    return {
        "dataset": "brain",
        "note": f"SynthBrainSym; generator seed = {SEED_OFFSET} + case number; one case = one synthetic subject. "
        "Used by brain (classification) and brain_lesion (segmentation). pretrain = 300 unlabelled "
        "subjects disjoint from every labelled split.",
        "splits": splits,
    }


class _SynthBrain(DatasetAdapter):
    split_name = "brain"
    has_volume_labels = True  # the generator knows which subjects have a lesion (``gen.health_of``)
    has_corpus_labels = True  # and renders each subject's lesion mask from its seed
    # the masks' map on both adapters: ``brain``'s own labels are the classes none/right/left of its volumes, no map
    # of a mask, and a method that pretrains with labels builds its head from this one (background and lesion)
    corpus_labels = dict(gen.LABELS)

    def default_root(self) -> Path:
        # both adapters read one generated folder
        return self.cache_dir / "brain"

    def prepare(self, progress: bool = True) -> None:
        labelled = self.labelled_ids()
        corpus = self.corpus_ids()
        items = {}
        for cid in sorted(labelled | corpus):

            def write(_p: Path, cid: str = cid) -> None:
                gen.write_layout(self.root, [(cid, seed_of(cid))], progress=False)

            items[f"imagesTr/{cid}.nii.gz"] = write
            if cid in labelled:
                items[f"labelsTr/{cid}.nii.gz"] = write
        ensure_generated(self.root, gen.GENERATOR_VERSION, items, "brain", progress)

    def corpus_with_labels(self, split: str, progress: bool = True) -> list[Record]:
        """The corpus with a lesion mask per case (``labelsCorpus/<id>.nii.gz``, rendered on first use; see
        ``corpus_label_records``)."""

        def render(cid: str) -> tuple[Any, Any]:
            # the mask ``write_layout`` would store beside the image: the same render, the same writer
            subj = gen.generate_subject(seed_of(cid))
            return subj["lesion"], subj["affine"]

        return corpus_label_records(
            self,
            split,
            self.root / "labelsTr",
            lambda cid: f"{cid}.nii.gz",
            render,
            gen.GENERATOR_VERSION,
            progress,
        )

    def image_path(self, cid: str) -> str:
        return str(self.root / "imagesTr" / f"{cid}.nii.gz")

    def records(self, split: str) -> list[Record]:
        # both tasks read the same subjects; only what a labelled record carries differs (``labelled``)
        ids = self.split_ids(split)
        if split == "pretrain":
            return [Record(c, c, self.image_path(c)) for c in ids]
        return [self.labelled(c) for c in ids]

    def labelled(self, c: str) -> Record:
        raise NotImplementedError

    def volume_labels(self, split: str) -> dict[str, int]:
        # from the seed alone, as ``class_of``: the corpus needs neither rendering nor a label file
        return {c: gen.health_of(seed_of(c)) for c in self.split_ids(split)}


@DATASETS.register("brain")
class Brain(_SynthBrain):
    info = DatasetInfo(modality="MR", spatial_dims=3, task="multiclass", labels=dict(gen.CLASSES), synthetic=True)

    def labelled(self, c: str) -> Record:
        return Record(c, c, self.image_path(c), classes=(gen.class_of(seed_of(c)),))


@DATASETS.register("brain_lesion")
class BrainLesion(_SynthBrain):
    info = DatasetInfo(modality="MR", spatial_dims=3, task="segmentation", labels=dict(gen.LABELS), synthetic=True)

    def labelled(self, c: str) -> Record:
        return Record(c, c, self.image_path(c), str(self.root / "labelsTr" / f"{c}.nii.gz"))


SUITES.register("brain")(
    protocols_added(
        Suite(
            name="brain",
            version=2,  # 2: the lesion task gains the representation probes (voxel_probe, knn_seg)
            data_version=1,
            synthetic=True,
            pretrain_dataset="brain",
            pretrain_splits=("pretrain",),
            description="synthetic brain MR (SynthBrainSym): lesion side none/right/left and lesion segmentation; "
            "pretraining on 300 unlabelled subjects",
            tasks=(
                Task(
                    name="side3",
                    dataset="brain",
                    kind="classification",
                    protocols=("linear_probe", "finetune", "knn", "few_shot"),
                    label_fractions=(0.125, 1.0),
                    metric="auroc",
                    protocol_options={"finetune": {"head": "saca"}},
                ),
                Task(
                    name="lesion",
                    dataset="brain_lesion",
                    kind="segmentation",
                    protocols=("finetune", "linear_probe", *PROBES_3D),
                    label_fractions=(0.125, 1.0),
                    metric="dice",
                ),
            ),
            seeds=(0, 1, 2),
            preprocessing=dict(PREPROCESSING),
        ),
        2,
        PROBES_3D,
    )
)


if __name__ == "__main__":
    from datasets.base import SPLITS_DIR, atomic_write_json

    atomic_write_json(SPLITS_DIR / "brain.json", build_split())
