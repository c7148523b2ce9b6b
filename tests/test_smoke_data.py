"""The smoke suite's generated files: organs on their anatomical side in RAS+ world coordinates."""

from __future__ import annotations

import numpy as np

from datasets.base import read_nifti
from datasets.synthetic.cache import atomic_save_nifti
from datasets.smoke import generate


def test_liver_and_right_kidney_lie_on_the_patients_right(tmp_path):
    # NIfTI world x > 0 is the patient's right (RAS+); smoke v1 put the liver and label 2 at x < 0
    image, label, affine = generate(1000)
    atomic_save_nifti(label, affine, tmp_path / "l.nii.gz")
    lab, aff = read_nifti(tmp_path / "l.nii.gz")

    def x_mm(k: int) -> float:
        return float((aff[:3, :3] @ np.argwhere(np.asarray(lab) == k).mean(0) + aff[:3, 3])[0])

    assert x_mm(1) > 0 and x_mm(2) > 0 > x_mm(3)
