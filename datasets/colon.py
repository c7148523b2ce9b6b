"""``colon``: the embedded multi-phase colon CT suite (SynthColon), the suite of LooseLocationSS.

The generator (datasets/synthetic/colon.py) writes one ``<patient>.npz`` (int16 HU [P, Z, H, W]) and one
``<patient>.json`` (phases, spacing, per-slice labels and lesion locations) per patient into the data cache, on first
use, with a checksum manifest.

Records are slices, the classification unit: ``Record(id=f"{patient}_{z:02d}", patient_id, image=<the patient's
.npz>, classes=(0|1,), meta={"patient", "slice", "phase", "phases", "n_slices", "loc", "box"})``. ``loc`` is the
tumour centroid ``(row, col)`` in the slice, normalised to [0, 1) by the image size (any grid of ``g`` cells maps it
to ``floor(g * loc)``), ``None`` on a negative slice; ``box`` is ``(r0, c0, r1, c1)`` normalised likewise.
``annotation(patient)["slice_match"][phase][z]`` is the index in ``phase`` of the N slice z (the per-phase slice
correspondence LooseLocationSS's neighbours use; the identity for the synthetic phases, rendered at the same table
positions).

How phases are fed (METHODS.md §6): LooseLocationSS is a single-channel slice classifier. Stage 1 pools the N, A and
P slices as separate images; stage 2 and every evaluation diagnose the non-contrast (N) slice, the other phases only
enter as neighbours of the location-consistency term. The generic path follows that: ``load(record)["image"]`` is the
record's phase as one channel ``[1, H, W]`` (raw HU), and labelled splits list the N slice of every position, so
the generic ``finetune`` / ``linear_probe`` classifier is the paper's plain single-phase baseline, tested on the
very slices LooseLocationSS is tested on. ``load`` also returns ``"phases"`` ``[P, H, W]`` (all phases of that
slice, in the order of ``meta["phases"]``) for callers that want them. The ``pretrain`` split lists every phase of
every slice as its own record (``{patient}_{z:02d}_{phase}``): the unlabelled pretraining corpus holds all the
single-phase images the method's stage 1 sees.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import DATASETS, SUITES
from bench.suites import Suite, Task
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record
from datasets.synthetic import colon as gen
from datasets.synthetic.cache import ensure_generated

SEED_OFFSET = 300_000  # generator seed = SEED_OFFSET + patient number
MAIN_PHASE = "N"
LABELLED = ("train", "val", "test")


@DATASETS.register("colon")
class Colon(DatasetAdapter):
    info = DatasetInfo(modality="CT", spatial_dims=2, task="binary", labels={0: "normal", 1: "tumour"}, synthetic=True)
    gen_config = gen.ColonConfig()
    cached_volumes = 8  # per-patient volumes kept in memory (slices of one patient are read together)

    def __init__(self, root=None, cache_dir=None, **options: Any) -> None:
        super().__init__(root, cache_dir, **options)
        self._ann: dict[str, dict] = {}
        self._vol: OrderedDict[str, np.ndarray] = OrderedDict()

    def default_root(self) -> Path:
        return self.cache_dir / self.registry_name

    @staticmethod
    def seed_of(patient: str) -> int:
        return SEED_OFFSET + int(patient.lstrip("c"))

    def all_patients(self) -> list[str]:
        return sorted({p for s in ("pretrain",) + LABELLED for p in self.split_ids(s)})

    def prepare(self, progress: bool = True) -> None:
        items = {}
        for pid in self.all_patients():

            def write(_p: Path, pid: str = pid) -> None:
                gen.write_patient(self.root, pid, self.seed_of(pid), self.gen_config)

            items[f"{pid}.npz"] = write
            items[f"{pid}.json"] = write
        ensure_generated(
            self.root, f"{gen.GENERATOR_VERSION}/{self.gen_config.key()}", items, self.registry_name, progress
        )

    # ---------------------------------------------------------------------------------------------- reading

    def annotation(self, patient: str) -> dict:
        if patient not in self._ann:
            path = self.root / f"{patient}.json"
            try:
                doc = json.loads(path.read_text())
            except FileNotFoundError:
                raise DataError(
                    f"{path}: annotation file missing (run the suite once to generate the data, or "
                    f"check data.cache_dir)"
                ) from None
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path}: unreadable annotation ({e})") from None
            missing = {"phases", "labels", "loc", "box", "spacing", "shape"} - set(doc)
            if missing:
                raise DataError(f"{path}: annotation lacks {sorted(missing)}")
            if MAIN_PHASE not in doc["phases"]:
                raise DataError(f"{path}: no {MAIN_PHASE} phase among {doc['phases']}")
            # files generated before the correspondence was recorded: the generator's phases share the slice index
            doc.setdefault("slice_match", {ph: list(range(len(doc["labels"]))) for ph in doc["phases"]})
            self._ann[patient] = doc
        return self._ann[patient]

    def volume(self, patient: str) -> np.ndarray:
        """The patient's int16 HU volume [P, Z, H, W] (phases in the order of its annotation), memoised."""
        if patient in self._vol:
            self._vol.move_to_end(patient)
            return self._vol[patient]
        path = self.root / f"{patient}.npz"
        try:
            with np.load(path) as f:
                vol = f["image"]
        except FileNotFoundError:
            raise DataError(f"{path}: volume missing (run the suite once to generate the data)") from None
        except Exception as e:  # zipfile / numpy raise many types for truncated or corrupt files
            raise DataError(f"{path}: unreadable volume ({type(e).__name__}: {e})") from None
        shape = list(self.annotation(patient)["shape"])
        if list(vol.shape) != shape:
            raise DataError(f"{path}: volume shape {list(vol.shape)} != {shape} in {patient}.json")
        self._vol[patient] = vol
        while len(self._vol) > self.cached_volumes:
            self._vol.popitem(last=False)
        return vol

    def records(self, split: str) -> list[Record]:
        out = []
        for pid in self.split_ids(split):
            ann = self.annotation(pid)
            phases = ann["phases"] if split == "pretrain" else [MAIN_PHASE]
            n = len(ann["labels"])
            for z in range(n):
                for ph in phases:
                    rid = f"{pid}_{z:02d}" if split != "pretrain" else f"{pid}_{z:02d}_{ph}"
                    loc, box = ann["loc"][ph][z], ann["box"][ph][z]
                    out.append(
                        Record(
                            id=rid,
                            patient_id=pid,
                            image=str(self.root / f"{pid}.npz"),
                            classes=None if split == "pretrain" else (int(ann["labels"][z]),),
                            meta={
                                "patient": pid,
                                "slice": z,
                                "phase": ph,
                                "phases": len(ann["phases"]),
                                "phase_names": tuple(ann["phases"]),
                                "n_slices": n,
                                "loc": tuple(loc) if loc else None,
                                "box": tuple(box) if box else None,
                            },
                        )
                    )
        return out

    def load(self, record: Record) -> dict[str, Any]:
        pid, z, ph = record.meta["patient"], record.meta["slice"], record.meta["phase"]
        ann = self.annotation(pid)
        vol = self.volume(pid)
        phases = vol[:, z].astype(np.float32)
        return {
            "id": record.id,
            "image": phases[ann["phases"].index(ph)][None],
            "phases": phases,
            "spacing": tuple(float(v) for v in ann["spacing"]),
            "affine": None,
            "label": None,
            "loc": record.meta["loc"],
        }


SUITES.register("colon")(
    Suite(
        name="colon",
        version=1,
        synthetic=True,
        pretrain_dataset="colon",
        pretrain_splits=("pretrain",),
        description="synthetic multi-phase colon CT slices, colorectal tumour vs normal (LooseLocationSS)",
        tasks=(
            Task(
                name="crc_slice",
                dataset="colon",
                kind="classification",
                protocols=("finetune", "lls_two_stage"),
                label_fractions=(1.0,),
                metric="auroc",
                patient_pattern=r"^(c\d+)_",
            ),
        ),
        seeds=(0, 1, 2),
        # LooseLocationSS's window (METHODS.md §6.2): WW 400, WL 60
        preprocessing={"a_min": -140.0, "a_max": 260.0},
    )
)
