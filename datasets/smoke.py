"""``smoke``: a tiny generated 3D segmentation set that exercises every code path in seconds.

Ten 64^3 CT-like volumes (4 mm voxels) with three labelled structures: a liver-like organ on the
patient's right and two identical-looking kidneys that only their side tells apart. The pretraining
corpus is the unlabelled train images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.registry import DATASETS, SUITES
from bench.suites import PROBES_3D, Suite, Task, protocols_added
from datasets.base import DatasetAdapter, DatasetInfo, Record
from datasets.synthetic.cache import atomic_save_nifti, ensure_generated

SHAPE = (64, 64, 64)
SPACING = 4.0
# 2: organs on their RAS+ side (v1: liver at -x, the patient's left) and a centred affine
GENERATOR_VERSION = "smoke-2"


def generate(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * SPACING for n in SHAPE], indexing="ij"))

    def ellipsoid(c, r):
        scaled = (grid - np.asarray(c, float)[:, None, None, None]) / np.asarray(r, float)[:, None, None, None]
        return (scaled**2).sum(0) <= 1

    s = rng.uniform(0.9, 1.1)
    body = ellipsoid([0, 0, 0], [110 * s, 80 * s, 200])
    image = np.full(SHAPE, -1000.0)
    image[body] = -90.0
    image[ellipsoid([0, 0, 0], [95 * s, 68 * s, 200])] = 40.0
    label = np.zeros(SHAPE, np.uint8)
    j = lambda: rng.normal(0, 5, 3)  # noqa: E731 - per-subject centre jitter in mm
    # RAS+ (the affine below): the patient's right is +x. Liver right, kidneys posterior on both sides.
    liver = ellipsoid(np.array([45, 10, 40]) * s + j(), np.array([45, 50, 45]) * s * rng.uniform(0.9, 1.1, 3))
    rk = ellipsoid(np.array([50, -35, -25]) * s + j(), np.array([18, 18, 28]) * s)
    lk = ellipsoid(np.array([-50, -35, -10]) * s + j(), np.array([18, 18, 28]) * s)
    for lab, mask, hu in ((1, liver, 105.0), (2, rk, 170.0), (3, lk, 170.0)):
        mask &= body
        image[mask] = hu + rng.normal(0, 8)
        label[mask] = lab
    image = ndimage.gaussian_filter(image, 0.7) + ndimage.gaussian_filter(rng.normal(0, 25, SHAPE), 0.8)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-(n / 2 - 0.5) * SPACING for n in SHAPE]  # world = the grid the organs are drawn on
    return image.astype(np.int16), label, affine


@DATASETS.register("smoke")
class SmokeDataset(DatasetAdapter):
    info = DatasetInfo(
        modality="CT",
        spatial_dims=3,
        task="segmentation",
        synthetic=True,
        labels={0: "background", 1: "liver", 2: "right kidney", 3: "left kidney"},
    )
    has_corpus_labels = True  # the corpus is the train images, whose labels are there

    def _seed(self, case_id: str) -> int:
        return 1000 + int(case_id.split("_")[1])

    def prepare(self, progress: bool = True) -> None:
        ids = sorted(self.labelled_ids())
        items = {}
        for cid in ids:

            def write_pair(_p: Path, cid: str = cid) -> None:
                img, lab, aff = generate(self._seed(cid))
                atomic_save_nifti(img, aff, self.root / "imagesTr" / f"{cid}.nii.gz")
                atomic_save_nifti(lab, aff, self.root / "labelsTr" / f"{cid}.nii.gz")

            items[f"imagesTr/{cid}.nii.gz"] = write_pair
            items[f"labelsTr/{cid}.nii.gz"] = write_pair
        ensure_generated(self.root, GENERATOR_VERSION, items, "smoke", progress)

    def split_names(self) -> tuple[str, ...]:
        # ``pretrain`` is derived in code (the train images), not listed in smoke.json: listing it there would change
        # the split hash that the published smoke results' config hashes hold
        return (*super().split_names(), "pretrain")

    def records(self, split: str) -> list[Record]:
        if split == "pretrain":  # the corpus is the unlabelled train images
            return [Record(r.id, r.patient_id, r.image) for r in self.records("train")]
        return [
            Record(
                cid, cid, str(self.root / "imagesTr" / f"{cid}.nii.gz"), str(self.root / "labelsTr" / f"{cid}.nii.gz")
            )
            for cid in self.split_ids(split)
        ]

    def corpus_with_labels(self, split: str, progress: bool = True) -> list[Record]:
        """The corpus (the train images) with the train labels."""
        return self.records("train" if split == "pretrain" else split)


SUITES.register("smoke")(
    protocols_added(
        Suite(
            name="smoke",
            version=3,  # 3: the representation probes
            data_version=2,
            synthetic=True,
            pretrain_dataset="smoke",
            pretrain_splits=("pretrain",),
            description="tiny generated 3D segmentation set for exercising every code path",
            tasks=(
                Task(
                    name="seg3",
                    dataset="smoke",
                    kind="segmentation",
                    protocols=("finetune", "linear_probe", *PROBES_3D),
                ),
            ),
            seeds=(0,),
        ),
        3,
        PROBES_3D,
    )
)
