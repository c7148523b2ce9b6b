"""``external``: released weights in their published layouts, loaded into the backbone (no pretraining).

    python run_bench.py method=external method.config.checkpoint=PATH method.config.format=swinunetr_ssl \
        backbone=swin_unetr_base

The file is read with ``torch.load(..., weights_only=True)`` (through ``bench.export.load_weights``) and its keys are
mapped to the backbone's; the load then goes through ``load_state_dict(strict=True)`` of the complete state. A file
that cannot be read as weights (missing, empty, not a PyTorch checkpoint, truncated, or holding Python objects other
than tensors) is one ``CheckpointError`` (a ``ValueError``) naming the file and what is wrong: the runner reports it
as one line, and torch's advice to load with the unsafe setting never reaches the user. One line reports what
happened::

    external: matched N, missing M (first keys), unexpected U (first keys) [...]

and the load FAILS (``ValueError`` naming the file) when an encoder key (``net.swinViT.*``) is missing or any shape
differs: never a silent partial load (the MONAI-RC BTCV ``--use_ssl_pretrained`` pitfall, METHODS.md §0.4).

Formats (``format``):

- ``swinunetr_ssl``: Swin UNETR SSL's ``model_swinvit.pt`` (METHODS.md §0.4, §3.6): ``{"state_dict":
  {"module.patch_embed.proj.weight", "module.layers1.0.blocks.0.mlp.fc1.weight", ...}}``. ``module.`` is stripped,
  ``net.swinViT.`` prefixed, ``mlp.fc1/fc2`` renamed ``mlp.linear1/linear2`` (MONAI's ``MLPBlock``). The same
  mapping reads a full ``SSLHead`` training checkpoint (``swinViT.`` prefixed keys; its rotation / contrastive /
  ``conv`` heads are dropped). The file has no UNETR decoder: the decoder keeps its initialisation and is reported
  as "not provided"; "fully matched" means every encoder key.
- ``saswin``: an SA-Swin ``SymmetryEnhancedHead`` / classifier checkpoint (``{"state_dict": {"swinViT.*",
  "symmetryAwareTX.*", ...}}``, optional ``module.``): ``swinViT.*`` only (METHODS.md §7); heads and the SACA block
  are dropped; the patch size is checked through the patch-embedding shape (the README's symmetry-only model uses
  patch 4 and does not fit).
- ``asa``: the ASA teacher (``{"teacher": {"module.model.swinViT...", "module.model.encoder1...",
  "module.head.*", "module.mlp.*", "module.mlp_local.*"}}``): ``module.model.`` is stripped and ``net.`` prefixed;
  ``head``, ``mlp``, ``mlp_local`` and the task conv ``out.*`` are dropped. The teacher is a whole Swin UNETR, so the
  decoder must be fully matched too.
- ``bench``: the harness's own encoder export (``bench/export.py``): ``{"state_dict": <backbone state>,
  "meta": ...}``, loaded strictly (no missing, no unexpected key).

Provenance: the file's sha256 is in the report (``report["sha256"]``) and in ``External.cache_identity(cfg)``
(``{"checkpoint_sha256": ..., "format": ...}``), which the runner merges into the pretraining cache key and the
export metadata: a replaced file at the same path never reuses a stale cached export.

``relative_position_index`` buffers are deterministic functions of the window size; a file without them is accepted
(they keep their computed value); when present they are loaded like every other key.

With ``checkpoint=None`` the method constructs (the method-contract tests build every method with its defaults), but
``export_encoder`` raises: ``external`` never hands a randomly initialised encoder to transfer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.backbones import SwinUNETRBackbone
from bench.export import SHOW, CheckpointError, check_file, first_keys, load_weights
from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput

ENCODER = "net.swinViT."
SSL_HEADS = ("rotation_head.", "contrastive_head.", "rotation_pre.", "contrastive_pre.", "conv.")
SASWIN_HEADS = SSL_HEADS + ("symmetryAwareTX.", "aaw_head.", "aaw_pre.", "classification_head.", "classification_pre.")
ASA_HEADS = ("head.", "mlp.", "mlp_local.")
OPTIONAL = ("relative_position_index",)


class MissingCheckpointError(ValueError):
    """``external`` was built without ``checkpoint`` and asked for an encoder."""


@dataclass
class Mapped:
    """A file's tensors under backbone key names, plus what was set aside."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # known heads of the source method
    unexpected: list[str] = field(default_factory=list)  # keys the format does not know


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _rename_mlp(key: str) -> str:
    """The old SSL code's ``mlp.fc1`` / ``mlp.fc2`` are MONAI ``MLPBlock``'s ``linear1`` / ``linear2``."""
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


def _state(doc: Any, entry: str, path: str, fmt: str) -> dict[str, torch.Tensor]:
    if not isinstance(doc, dict) or entry not in doc or not isinstance(doc[entry], dict):
        found = sorted(map(str, doc))[:SHOW] if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"external: {path} is not in the {fmt!r} layout: expected a dict with {entry!r}; found {found}"
        )
    return doc[entry]


def _swin_only(sd: dict[str, torch.Tensor], heads: tuple[str, ...]) -> Mapped:
    out = Mapped()
    for k, v in sd.items():
        key = _strip(k, "module.")
        if key.startswith(heads):
            out.dropped.append(k)
            continue
        key = _strip(_strip(key, "swinViT."), "swin_vit.")
        out.tensors[ENCODER + _rename_mlp(key)] = v
    return out


def map_swinunetr_ssl(doc: Any, path: str) -> Mapped:
    return _swin_only(_state(doc, "state_dict", path, "swinunetr_ssl"), SSL_HEADS)


def map_saswin(doc: Any, path: str) -> Mapped:
    return _swin_only(_state(doc, "state_dict", path, "saswin"), SASWIN_HEADS)


def map_asa(doc: Any, path: str) -> Mapped:
    out = Mapped()
    for k, v in _state(doc, "teacher", path, "asa").items():
        key = _strip(k, "module.")
        if key.startswith("model."):
            key = key[len("model.") :]
            if key.startswith("out."):
                out.dropped.append(k)
            else:
                out.tensors["net." + _rename_mlp(key)] = v
        elif key.startswith(ASA_HEADS):
            out.dropped.append(k)
        else:
            out.unexpected.append(k)
    return out


def map_bench(doc: Any, path: str) -> Mapped:
    return Mapped(tensors=dict(_state(doc, "state_dict", path, "bench")))


#: format -> (mapping, whether the file must provide the decoder, whether unexpected keys are an error)
FORMATS: dict[str, tuple[Callable[[Any, str], Mapped], bool, bool]] = {
    "swinunetr_ssl": (map_swinunetr_ssl, False, False),
    "saswin": (map_saswin, False, False),
    "asa": (map_asa, True, False),
    "bench": (map_bench, True, True),
}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed (released checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WHAT = "external: checkpoint"


def _check_file(path: str) -> None:
    """A missing path or a directory: one ``CheckpointError`` naming it."""
    check_file(path, WHAT)


def load_external(backbone: SwinUNETRBackbone, path: str | Path, fmt: str) -> dict[str, Any]:
    """Load ``path`` in layout ``fmt`` into ``backbone``; return the report (counts and key lists)."""
    if fmt not in FORMATS:
        raise ValueError(f"external: unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    path = str(path)
    _check_file(path)
    mapper, need_decoder, strict_unexpected = FORMATS[fmt]
    doc = load_weights(path, WHAT)
    mapped = mapper(doc, path)
    not_tensor = [str(k) for k, v in mapped.tensors.items() if not isinstance(v, torch.Tensor)]
    if not_tensor:
        raise CheckpointError(
            f"{WHAT} {path} is not in the {fmt!r} layout: {len(not_tensor)} entry(ies) of its state are not tensors:"
            f" {first_keys(not_tensor)}"
        )
    target = backbone.state_dict()
    unexpected = mapped.unexpected + [k for k in mapped.tensors if k not in target]
    shape = [
        f"{k}: file {tuple(v.shape)} vs backbone {tuple(target[k].shape)}"
        for k, v in mapped.tensors.items()
        if k in target and v.shape != target[k].shape
    ]
    matched = [k for k, v in mapped.tensors.items() if k in target and v.shape == target[k].shape]
    absent = [k for k in target if k not in mapped.tensors and not k.endswith(OPTIONAL)]
    missing_enc = [k for k in absent if k.startswith(ENCODER)]
    missing_dec = [k for k in absent if not k.startswith(ENCODER)]
    missing = missing_enc + (missing_dec if need_decoder else [])
    report = {
        "path": path,
        "format": fmt,
        "sha256": file_sha256(path),
        "matched": matched,
        "missing": missing,
        "unexpected": unexpected,
        "dropped": mapped.dropped,
        "not_provided": [] if need_decoder else missing_dec,
        "shape": shape,
    }
    line = (
        f"external: matched {len(matched)}, missing {len(missing)}"
        + (f" ({first_keys(missing)})" if missing else "")
        + f", unexpected {len(unexpected)}"
        + (f" ({first_keys(unexpected)})" if unexpected else "")
        + (f", shape mismatches {len(shape)}" if shape else "")
        + (f", dropped {len(mapped.dropped)} source-head keys" if mapped.dropped else "")
        + (
            f", decoder not provided ({len(report['not_provided'])} keys keep their init)"
            if report["not_provided"]
            else ""
        )
        + f" [{fmt}: {path}, sha256 {report['sha256'][:12]}]"
    )
    print(line)
    problems = []
    if shape:
        hint = ""
        pe = ENCODER + "patch_embed.proj.weight"
        if pe in mapped.tensors and pe in target and mapped.tensors[pe].shape != target[pe].shape:
            f_shape, b_shape = tuple(mapped.tensors[pe].shape), tuple(target[pe].shape)
            hint = (
                f" (the file's patch embedding is {f_shape}: feature_size {f_shape[0]}, in_channels {f_shape[1]},"
                f" patch {f_shape[2:]}; the backbone's is {b_shape}: pick the matching backbone, e.g. "
                f"backbone=swin_unetr_base for feature_size 48)"
            )
        problems.append(f"{len(shape)} shape mismatch(es): {first_keys(shape)}{hint}")
    if missing_enc:
        problems.append(f"{len(missing_enc)} encoder key(s) missing: {first_keys(missing_enc)}")
    if need_decoder and missing_dec:
        problems.append(f"{len(missing_dec)} decoder key(s) missing: {first_keys(missing_dec)}")
    if strict_unexpected and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {first_keys(unexpected)}")
    if problems:
        raise ValueError(
            f"external: {path} does not fully match the backbone in format {fmt!r}: " + "; ".join(problems)
        )
    state = dict(target)
    state.update({k: mapped.tensors[k] for k in matched})
    backbone.load_state_dict(state, strict=True)
    return report


@METHODS.register("external", tags=("3d",))
class External(PretrainMethod):
    @dataclass
    class Config:
        checkpoint: str | None = None  # path of the released weights
        format: str = "swinunetr_ssl"  # swinunetr_ssl | saswin | asa | bench

        def __post_init__(self) -> None:
            # checked when the plan is made, before any data generation: not after the corpus is prepared
            if self.format not in FORMATS:
                raise ValueError(f"external: unknown format {self.format!r}; known formats: {', '.join(FORMATS)}")
            if self.checkpoint is not None:
                _check_file(str(self.checkpoint))

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d"})
    pretrains: ClassVar[bool] = False
    #: exports only with a user-supplied checkpoint (the method contract skips its default-config export)
    requires_checkpoint: ClassVar[bool] = True

    def __init__(self, backbone: SwinUNETRBackbone, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        if self.cfg.format not in FORMATS:
            raise ValueError(f"external: unknown format {self.cfg.format!r}; known formats: {', '.join(FORMATS)}")
        self.report: dict[str, Any] | None = None
        if self.cfg.checkpoint is not None:
            self.report = load_external(backbone, self.cfg.checkpoint, self.cfg.format)

    @classmethod
    def check_inputs(cls, cfg: Config, make_backbone: Any) -> None:
        """The checkpoint loads into the plan's backbone in its format (a corrupt file or another layout is refused
        before the corpus is prepared, not after)."""
        if cfg.checkpoint is not None:
            load_external(make_backbone(), cfg.checkpoint, cfg.format)

    @classmethod
    def cache_identity(cls, cfg: Config) -> dict[str, Any]:
        """The content, not the path, identifies the weights: sha256 of the checkpoint file and its format."""
        if cfg.checkpoint is None:
            return {}
        _check_file(str(cfg.checkpoint))
        return {"checkpoint_sha256": file_sha256(cfg.checkpoint), "format": cfg.format}

    def export_encoder(self) -> SwinUNETRBackbone:
        if self.report is None:
            raise MissingCheckpointError(
                "external: no checkpoint given; pass method.config.checkpoint=PATH (and method.config.format="
                f"{'|'.join(FORMATS)}) to load released weights"
            )
        return self.backbone

    def training_step(self, batch: dict, step: StepInfo) -> StepOutput:
        raise RuntimeError(
            "external loads released weights and does no pretraining; the engine never calls its training_step"
        )
