"""AMOS22 (abdominal multi-organ, CT + MRI) exactly as ``amos22.zip`` unpacks (shared/DATA.md A.3).

``root`` (or ``$SSLBENCH_AMOS_ROOT``) may be the folder holding ``dataset.json`` or either level of the doubled
``amos22/amos22/`` folder the zip creates. CT only by default (``amos_NNNN`` with NNNN <= 500; > 500 are MRI);
``include_mr=True`` keeps the MRI cases too.

Splits are *derived from dataset.json* (AMOS publishes no case-id split beyond its lists; the ids vary
between the zenodo records), deterministically, never random:

- ``train`` = the ``training`` list (240 cases of which 200 CT) -- the label-efficiency pool;
- ``val`` / ``test`` = the ``validation`` list (labels released post-challenge) in natural id order,
  every 4th case (positions 0, 4, 8, ...) to ``val`` for model selection, the rest to ``test``;
- ``pretrain`` = the ``training`` images, as ASA pretrains on them; the hidden-label ``test`` list is
  ``unlabelled``.

The 15 labels keep their released spellings ("arota", "postcava").
"""

from __future__ import annotations

from pathlib import Path
from bench.registry import DATASETS, SUITES
from bench.suites import PROBES_3D, Suite, Task, protocols_added
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record, natural_key
from datasets.msd import ASA_PREPROCESSING, case_id, count_problems, entry_paths, is_junk, read_index

AMOS_LABELS = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gall bladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "arota",
    9: "postcava",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}
AMOS_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 11, 11: 12, 12: 13}
CT_MAX_ID = 500


def is_ct(cid: str) -> bool:
    try:
        return int(cid.rsplit("_", 1)[-1]) <= CT_MAX_ID
    except ValueError:
        raise DataError(f"AMOS case id {cid!r} does not end in a number") from None


@DATASETS.register("amos")
class AMOS(DatasetAdapter):
    info = DatasetInfo(modality="CT", spatial_dims=3, task="segmentation", labels=AMOS_LABELS)
    root_env = "SSLBENCH_AMOS_ROOT"

    def base(self) -> Path:
        for cand in (self.root, self.root / "amos22", self.root / "amos22" / "amos22"):
            if (cand / "dataset.json").is_file():
                return cand
        raise DataError(f"{self.root}: not an AMOS22 folder; expected dataset.json here or under amos22/amos22/")

    def prepare(self, progress: bool = True) -> None:
        super().prepare(progress)
        self.base()

    def _lists(self) -> dict[str, dict[str, tuple[str, str | None]]]:
        base = self.base()
        index = base / "dataset.json"
        doc = read_index(index)
        keep_mr = bool(self.options.get("include_mr", False))
        out: dict[str, dict[str, tuple[str, str | None]]] = {}
        for key in ("training", "validation", "test"):
            entries = {}
            for e in doc.get(key, []):
                img, lab = entry_paths(base, e, index)
                cid = case_id(img)
                if not is_junk(img) and (keep_mr or is_ct(cid)):
                    entries[cid] = (img, lab)
            out[key] = entries
        return out

    def split_names(self) -> tuple[str, ...]:
        return ("train", "val", "test", "pretrain", "unlabelled")

    def expected_count(self, split: str) -> int | None:
        return None  # derived from dataset.json; index_problems checks its counts

    def split_ids(self, split: str) -> list[str]:
        lists = self._lists()
        valid = sorted(lists["validation"], key=natural_key)
        table = {
            "train": sorted(lists["training"], key=natural_key),
            "pretrain": sorted(lists["training"], key=natural_key),
            "val": valid[0::4],
            "test": [c for i, c in enumerate(valid) if i % 4],
            "unlabelled": sorted(lists["test"], key=natural_key),
        }
        if split not in table:
            raise DataError(f"dataset 'amos' has no split {split!r}; it has {list(table)}")
        return table[split]

    def records(self, split: str) -> list[Record]:
        lists = self._lists()
        source = {
            "train": "training",
            "pretrain": "training",
            "val": "validation",
            "test": "validation",
            "unlabelled": "test",
        }.get(split)
        ids = self.split_ids(split)
        labelled = split in ("train", "val", "test")
        out = []
        for cid in ids:
            img, lab = lists[source][cid]
            if labelled and lab is None:
                raise DataError(f"{self.base() / 'dataset.json'}: {source} entry {cid} has no label")
            out.append(Record(cid, cid, img, lab if labelled else None))
        return out

    def index_problems(self) -> list[str]:
        try:
            index = self.base() / "dataset.json"
            doc = read_index(index)
        except DataError as e:
            return [str(e)]
        return count_problems(
            index, doc, (("numTraining", "training"), ("numValidation", "validation"), ("numTest", "test"))
        )


SUITES.register("amos")(
    protocols_added(
        Suite(
            name="amos",
            version=2,  # 2: the representation probes (voxel_probe, knn_seg)
            data_version=1,
            pretrain_dataset="amos",
            pretrain_splits=("pretrain",),
            description="AMOS22 CT, 15 organs: label efficiency on 5/10/20/50/100% of the training list (5 draws per "
            "fraction), tested on the released validation list; pretraining on the training images (ASA); "
            "ASA preprocessing",
            tasks=(
                Task(
                    name="organs15",
                    dataset="amos",
                    kind="segmentation",
                    protocols=("finetune", *PROBES_3D),
                    label_fractions=(0.05, 0.1, 0.2, 0.5, 1.0),
                    draws=5,
                    metric="dice",
                ),
            ),
            seeds=(0,),
            preprocessing=dict(ASA_PREPROCESSING),
        ),
        2,
        PROBES_3D,
    )
)
