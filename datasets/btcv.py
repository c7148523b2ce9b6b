"""BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen) exactly as users download it.

Accepted layouts under ``root`` (shared/DATA.md A.1): the unzipped Synapse archive
``RawData/Training/{img,label}/`` (or the same without the ``RawData`` folder), and the MONAI
renamed layout ``imagesTr/ labelsTr/`` that ``dataset_0.json`` refers to. Splits are the committed
``datasets/splits/btcv.json``: ``train``/``val`` = MONAI's dataset_0.json (24 / img0035–0040) and
``liu_train``/``liu_test`` = the CLIP-driven Universal Model split ASA follows (test img0023–0028);
``pretrain`` = the 18 cases in no val/test split of either (dataset_0.json's 24 train images hold all six
``liu_test`` cases, so pretraining on them would leak under Liu et al.'s split).
"""

from __future__ import annotations

from pathlib import Path

from bench.registry import DATASETS
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record

BTCV_LABELS = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

_LAYOUTS = (
    ("imagesTr", "labelsTr"),
    ("RawData/Training/img", "RawData/Training/label"),
    ("Training/img", "Training/label"),
)


@DATASETS.register("btcv")
class BTCV(DatasetAdapter):
    info = DatasetInfo(modality="CT", spatial_dims=3, task="segmentation", labels=BTCV_LABELS)
    root_env = "SSLBENCH_BTCV_ROOT"

    def layout(self) -> tuple[Path, Path]:
        for img, lab in _LAYOUTS:
            if (self.root / img).is_dir():
                return self.root / img, self.root / lab
        raise DataError(f"{self.root}: not a BTCV folder; expected one of " + ", ".join(f"{i}/" for i, _ in _LAYOUTS))

    def prepare(self, progress: bool = True) -> None:
        super().prepare(progress)
        self.layout()

    def records(self, split: str) -> list[Record]:
        img_dir, lab_dir = self.layout()
        out = []
        for cid in self.split_ids(split):
            num = cid[len("img") :]
            label = lab_dir / f"label{num}.nii.gz"
            out.append(Record(cid, cid, str(img_dir / f"{cid}.nii.gz"), str(label) if split != "pretrain" else None))
        return out
