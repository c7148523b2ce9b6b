"""LiTS 2017 (liver + tumour CT) exactly as the CodaLab zips unpack (shared/DATA.md A.4).

``root`` (or ``$SSLBENCH_LITS_ROOT``) holds ``Training Batch 1/`` (``volume-0.nii`` .. ``volume-27.nii`` with
``segmentation-N.nii``) and ``Training Batch 2/`` (28..130) -- folder names with spaces, uncompressed
``.nii`` (``.nii.gz`` is accepted too). There is no index file: volume-N pairs with segmentation-N.
Labels: 0 background, 1 liver, 2 tumour. Splits: committed ``datasets/splits/lits.json`` (see its note).
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.registry import DATASETS, SUITES
from bench.suites import PROBES_3D, Suite, Task, protocols_added
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record
from datasets.msd import ASA_PREPROCESSING, is_junk

LITS_LABELS = {0: "background", 1: "liver", 2: "tumour"}
BATCHES = ("Training Batch 1", "Training Batch 2")
_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")


@DATASETS.register("lits")
class LiTS(DatasetAdapter):
    info = DatasetInfo(modality="CT", spatial_dims=3, task="segmentation", labels=LITS_LABELS)
    root_env = "SSLBENCH_LITS_ROOT"

    def batches(self) -> list[Path]:
        found = [self.root / b for b in BATCHES if (self.root / b).is_dir()]
        if not found:
            raise DataError(f"{self.root}: not a LiTS folder; expected '{BATCHES[0]}/' and '{BATCHES[1]}/'")
        return found

    def prepare(self, progress: bool = True) -> None:
        super().prepare(progress)
        self.batches()

    def volumes(self) -> dict[int, Path]:
        """volume number -> image path, over both batch folders (macOS ``._`` junk skipped)."""
        out: dict[int, Path] = {}
        for folder in self.batches():
            for p in folder.iterdir():
                m = _VOLUME.match(p.name)
                if m and not is_junk(p.name):
                    if int(m.group(1)) in out:
                        raise DataError(f"{p}: volume-{m.group(1)} also exists as {out[int(m.group(1))]}")
                    out[int(m.group(1))] = p
        return out

    def records(self, split: str) -> list[Record]:
        vols = self.volumes()
        out = []
        for cid in self.split_ids(split):
            n = int(cid.split("-")[1])
            # a volume missing on disk keeps its expected path so validate() names it
            img = vols.get(n, self.root / BATCHES[0 if n <= 27 else 1] / f"volume-{n}.nii")
            ext = ".nii.gz" if img.name.endswith(".gz") else ".nii"
            label = img.with_name(f"segmentation-{n}{ext}")
            out.append(Record(cid, cid, str(img), str(label) if split != "pretrain" else None))
        return out


SUITES.register("lits")(
    protocols_added(
        Suite(
            name="lits",
            version=2,  # 2: the representation probes (voxel_probe, knn_seg)
            data_version=1,
            pretrain_dataset="lits",
            pretrain_splits=("pretrain",),
            description="LiTS 2017 liver + tumour CT (131 training volumes, committed 91/13/27 split); pretraining on "
            "the train images; ASA preprocessing",
            tasks=(
                Task(
                    name="liver_tumour",
                    dataset="lits",
                    kind="segmentation",
                    protocols=("finetune", "linear_probe", *PROBES_3D),
                    metric="dice",
                ),
            ),
            seeds=(0, 1, 2),
            preprocessing=dict(ASA_PREPROCESSING),
        ),
        2,
        PROBES_3D,
    )
)
