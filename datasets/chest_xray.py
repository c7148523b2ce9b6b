"""``chest_xray``: the embedded synthetic chest radiograph suite (SynthCXR, DATA.md C.3).

The generator (datasets/synthetic/chest_xray.py) writes the ChestX-ray14 layout, so this adapter is the
ChestX-ray14 reader with the generator's four findings (``FINDINGS`` order) and a committed split file
(``datasets/splits/chest_xray.json``, built by ``build_split``):

* 500 labelled patients, one image each plus a follow-up for every third patient (666 images); the
  patients are split by ``datasets.base.positional_split`` (test 20 %, val 10 %, train 70 %), so a
  patient's follow-up stays in its split;
* ``pretrain``: 2000 unlabelled images of 2000 further patients, disjoint from every labelled split.

Image ``NNNNNNNN_FFF.png`` has generator seed ``SEED_OFFSET + 10 * patient + follow-up``. The
generator renders about 4.7 images/s in one process (``datasets.synthetic.chest_xray.measure``), so
the whole set (2666 images) takes about 10 minutes once; the suite yaml caps what a quick budget uses.
Generation is resumable: each patient is one item of the checksum manifest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.registry import DATASETS, SUITES
from bench.suites import Suite, Task
from bench.types import temp_sibling
from datasets.base import DataError, DatasetInfo, load_split_file, natural_key, positional_split
from datasets.chestxray14 import PREPROCESSING_8BIT, ChestXray14
from datasets.synthetic import chest_xray as gen
from datasets.synthetic.cache import ensure_generated

SEED_OFFSET = 300_000
N_LABELLED_PATIENTS = 500
N_PRETRAIN = 2000
PRETRAIN_FIRST_PATIENT = 10_001


def image_name(patient: int, follow_up: int) -> str:
    return f"{patient:08d}_{follow_up:03d}.png"


def parse_name(name: str) -> tuple[int, int]:
    stem = name[:-4]
    pid, fu = stem.split("_")
    return int(pid), int(fu)


def seed_of(name: str) -> int:
    pid, fu = parse_name(name)
    return SEED_OFFSET + 10 * pid + fu


def build_split() -> dict:
    """The committed split document (regenerate with ``python -m datasets.chest_xray``)."""
    patients = [str(p) for p in range(1, N_LABELLED_PATIENTS + 1)]
    by_patient = positional_split(patients)
    splits: dict[str, list[str]] = {}
    for s in ("train", "val", "test"):
        splits[s] = [image_name(int(p), fu) for p in by_patient[s] for fu in range(1 + (int(p) % 3 == 0))]
    splits["pretrain"] = [image_name(p, 0) for p in range(PRETRAIN_FIRST_PATIENT, PRETRAIN_FIRST_PATIENT + N_PRETRAIN)]
    return {
        "dataset": "chest_xray",
        "note": f"SynthCXR; image NNNNNNNN_FFF.png has generator seed {SEED_OFFSET} + 10 * patient + follow-up. "
        "Labelled patients 1..500 split by positional_split (patient-level); pretrain = 2000 unlabelled "
        "images of patients 10001..12000, disjoint from every labelled split.",
        "splits": splits,
    }


@DATASETS.register("chest_xray")
class ChestXray(ChestXray14):
    info = DatasetInfo(
        modality="XR", spatial_dims=2, task="multilabel", labels=dict(enumerate(gen.FINDINGS)), synthetic=True
    )
    root_env = None
    label_names = tuple(gen.FINDINGS)

    def default_root(self) -> Path:
        return self.cache_dir / self.registry_name

    def split_names(self) -> tuple[str, ...]:
        return tuple(load_split_file("chest_xray"))

    def split_ids(self, split: str) -> list[str]:
        splits = load_split_file("chest_xray")
        if split not in splits:
            raise DataError(f"split file chest_xray.json has no split {split!r}; it has {sorted(splits)}")
        return list(splits[split])

    def expected_count(self, split: str) -> int | None:
        try:
            return len(self.split_ids(split))
        except DataError:
            return None

    def prepare(self, progress: bool = True) -> None:
        splits = load_split_file("chest_xray")
        names = sorted({n for v in splits.values() for n in v}, key=natural_key)
        patients: dict[int, list[str]] = {}
        for n in names:
            patients.setdefault(parse_name(n)[0], []).append(n)
        items = {}
        for pid, pnames in patients.items():

            def write(_p: Path, pid: int = pid, pnames: list[str] = pnames) -> None:
                self._write_patient(pid, pnames)

            for n in pnames:
                items[f"images/{n}"] = write
            items[f"parts/{pid:08d}.csv"] = write
        ensure_generated(self.root, gen.GENERATOR_VERSION, items, self.registry_name, progress)
        self._write_index(splits, sorted(patients))

    def _write_patient(self, pid: int, pnames: list[str]) -> None:
        # the generator writes a whole CXR14 layout; one patient per call keeps generation resumable
        tmp = self.root / "parts" / f".tmp-{os.getpid()}-{pid:08d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        gen.write_cxr14_layout(tmp, [(n, seed_of(n), pid) for n in pnames], progress=False)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        for n in pnames:
            os.replace(tmp / "images" / n, self.root / "images" / n)
        os.replace(tmp / "Data_Entry_2017.csv", self.root / "parts" / f"{pid:08d}.csv")
        shutil.rmtree(tmp)

    def _write_index(self, splits: dict[str, list[str]], patients: list[int]) -> None:
        """Data_Entry_2017.csv (rows of every patient part) and the two official-style lists."""
        rows = [gen.CSV_HEADER]
        for pid in patients:
            lines = (self.root / "parts" / f"{pid:08d}.csv").read_text().splitlines()
            rows += [ln for ln in lines[1:] if ln.strip()]
        text = {
            "Data_Entry_2017.csv": "\n".join(rows) + "\n",
            "train_val_list.txt": "".join(n + "\n" for s in ("train", "val", "pretrain") for n in splits[s]),
            "test_list.txt": "".join(n + "\n" for n in splits["test"]),
        }
        for name, content in text.items():
            path = self.root / name
            if path.is_file() and path.read_text() == content:
                continue
            tmp = temp_sibling(path)
            tmp.write_text(content)
            os.replace(tmp, path)
        self._entries = None


# quick budgets cap the corpus in conf/suite/chest_xray.yaml; the split itself is always full size
SUITES.register("chest_xray")(
    Suite(
        name="chest_xray",
        version=1,
        synthetic=True,
        pretrain_dataset="chest_xray",
        pretrain_splits=("pretrain",),
        description="synthetic PA chest radiographs (SynthCXR), 4-finding multi-label classification; "
        "pretraining on 2000 unlabelled images",
        tasks=(
            Task(
                name="findings4",
                dataset="chest_xray",
                kind="classification",
                protocols=("linear_probe", "finetune", "knn", "few_shot"),
                label_fractions=(0.1, 1.0),
                metric="auroc",
                patient_pattern=r"^(\d+)_",
            ),
        ),
        seeds=(0, 1, 2),
        preprocessing=dict(PREPROCESSING_8BIT),
    )
)


if __name__ == "__main__":
    from datasets.base import SPLITS_DIR, atomic_write_json

    atomic_write_json(SPLITS_DIR / "chest_xray.json", build_split())
