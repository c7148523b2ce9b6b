"""Encoder exports: the weights a protocol receives, with the metadata to rebuild them.

Loading is always ``strict=True``: a missing or unexpected key is an error, never a silent
partial load.

Every file read back here, and every user checkpoint ``methods/external.py`` reads, goes through
:func:`load_weights`: ``torch.load(..., weights_only=True)``, with any failure turned into one
:class:`CheckpointError` that names the file and says what is wrong with it (missing, empty, not a PyTorch
checkpoint, truncated or corrupt, or holding Python objects other than tensors). torch's own message is never passed
on: for a refused file it advises loading with the unsafe setting, which a benchmark must not tell its users.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from bench.backbones import Backbone, build_backbone
from bench.engine import atomic_torch_save
from bench.types import DataError

#: how every file written by ``torch.save`` begins: its zip archive, or the legacy format's pickled magic number
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
PICKLE_PROTO = b"\x80"
PICKLE_MEMBER = "data.pkl"  # the zip format's pickled object: <archive>/data.pkl
SHOW = 5


class CheckpointError(DataError, ValueError):
    """A checkpoint or export that cannot be loaded as weights; the message names the file and what is wrong.

    A :class:`~bench.types.DataError` (the command line prints it as one line, exit 2) and a ``ValueError`` (what
    the runner already turns into a one-line error around method construction and protocol runs)."""


def check_file(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` as a :class:`Path` if it is a readable file; else a :class:`CheckpointError` naming it."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{what} {p} is a directory, not a checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{what} {p} does not exist")
    return p


def _inner_message(exc: BaseException) -> str:
    """torch's own reason, without its advice: the weights-only loader wraps the unpickler's error in a message
    that recommends the unsafe setting; the wrapped error (its context) is the reason."""
    for e in (exc.__cause__, exc.__context__, exc):
        if e is not None and str(e).strip() and "weights_only" not in str(e):
            return str(e).strip().splitlines()[0][:200]
    return type(exc).__name__


def _refused_global(exc: BaseException) -> str | None:
    """The class or function a weights-only load refused (``module.name``), if that was the failure."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    for e in (exc.__cause__, exc.__context__, exc):
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e) if e is not None else "")
        if m:
            return m.group(1)
    return None


def _objects(name: str | None) -> str:
    return (
        f"contains Python objects other than tensors{f' ({name})' if name else ''}; the harness loads weights only"
        " (tensors, numbers, strings and containers of them)"
    )


def _refused(exc: BaseException) -> str | None:
    """What the weights-only unpickler refused in a file that is whole, if that was the failure."""
    name = _refused_global(exc)
    if name is not None:
        return _objects(name)
    if isinstance(exc, pickle.UnpicklingError):
        why = _inner_message(exc)
        return f"holds something the weights-only loader refuses ({why}); the harness loads weights only"
    return None


TRUNCATED = "is truncated or corrupt (an interrupted download or copy?)"
NOT_TORCH = (
    "is not a PyTorch checkpoint: its bytes are neither torch.save's zip archive nor its legacy format (random or "
    "foreign bytes, or the wrong file)"
)


def _diagnose_zip(path: Path, exc: Exception) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # every member's CRC: the archive is whole, or this says where it is not
            names = zf.namelist()
    except Exception:  # an unreadable archive, whatever the zip layer raised
        return TRUNCATED + ": its zip archive cannot be read"
    if bad is not None:
        return f"{TRUNCATED}: archive member {bad} fails its checksum"
    if not any(n.split("/")[-1] == PICKLE_MEMBER for n in names):
        return f"is a zip archive but not a PyTorch checkpoint (it has no {PICKLE_MEMBER})"
    refused = _refused(exc)
    if refused is not None:
        return refused
    return f"cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {_inner_message(exc)})"


def _diagnose_legacy(path: Path, exc: Exception) -> str:
    """The legacy format is successive pickles (magic number, protocol version, system info, the object, its
    storage keys) then the raw storages: each pickle must parse to its end, or the file was cut short."""
    with open(path, "rb") as f:
        try:
            first = list(pickletools.genops(f))
        except Exception:  # not even one pickle
            return NOT_TORCH
        if not any(arg == LEGACY_MAGIC for _, arg, _ in first):
            return "is a Python pickle, not a file written by torch.save (not a PyTorch checkpoint)"
        try:
            for _ in range(4):
                list(pickletools.genops(f))
        except Exception:  # a pickle that ends early or holds garbage
            return TRUNCATED
    refused = _refused(exc)
    if refused is not None:
        return refused
    return f"{TRUNCATED}: its tensor data cannot be read ({type(exc).__name__}: {_inner_message(exc)})"


def load_weights(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; any failure is one :class:`CheckpointError`
    whose message starts ``"{what} {path}"`` and says what is wrong with the file."""
    p = check_file(path, what)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(f"{what} {p} cannot be read: {e.strerror or e}") from None
    if size == 0:
        raise CheckpointError(f"{what} {p} is empty (0 bytes), not a PyTorch checkpoint")
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        raise CheckpointError(f"{what} {p} {NOT_TORCH}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            doc = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # whatever torch raised: the user gets the file and the reason
            why = _diagnose_zip(p, e) if head.startswith(ZIP_MAGIC) else _diagnose_legacy(p, e)
            raise CheckpointError(f"{what} {p} {why}") from None
    for w in caught:  # torch's warnings about a file it did load still reach the user
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return doc


def save_export(backbone: Backbone, path: Path, meta: dict[str, Any], extras: dict[str, Any] | None = None) -> None:
    """The backbone (loaded strictly by every protocol) plus optional method extras (e.g. SACA's pre-trained
    block) that a protocol may use; plain tensors and numbers only, so ``weights_only`` loading keeps working."""
    meta = dict(
        meta,
        backbone=backbone.registry_name,
        backbone_kwargs=backbone.build_kwargs(),
        spatial_dims=backbone.spatial_dims,
        feature_dim=backbone.feature_dim,
    )
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    atomic_torch_save({"state_dict": state, "meta": meta, "extras": extras or {}}, path)


def _export_error(path: Path, problem: str) -> CheckpointError:
    """An export's problem; for one in the runs cache (``<runs>/pretrain/<method>/<hash>/export.pt``), how to
    recompute it."""
    msg = problem if problem.startswith(f"export {path}") else f"export {path} {problem}"
    if path.match("pretrain/*/*/export.pt"):
        msg += f"; delete its pretraining directory {path.parent} to recompute it"
    return CheckpointError(msg)


def _read(path: str | Path, *entries: str) -> dict[str, Any]:
    """An export's dict, checked to hold ``entries`` (each a dict); every failure names the file."""
    p = Path(path)
    try:
        doc = load_weights(p, "export")
    except CheckpointError as e:
        raise _export_error(p, str(e)) from None
    bad = [k for k in entries if not isinstance(doc, dict) or not isinstance(doc.get(k), dict)]
    if not isinstance(doc, dict) or bad:
        found = sorted(map(str, doc))[:SHOW] if isinstance(doc, dict) else type(doc).__name__
        raise _export_error(
            p, f"is not an encoder export: expected a dict with {', '.join(map(repr, entries))}; found {found}"
        )
    return doc


def load_extras(path: Path) -> dict[str, Any]:
    """The method extras of an export ({} for exports without any)."""
    doc = _read(path)
    extras = doc.get("extras") or {}
    if not isinstance(extras, dict):
        raise _export_error(Path(path), f"is not an encoder export: its 'extras' is a {type(extras).__name__}")
    return extras


def load_meta(path: Path) -> dict[str, Any]:
    """An export's metadata (method, corpus, pretraining steps and compute, backbone), without building it."""
    return _read(path, "meta")["meta"]


def first_keys(keys: list[str]) -> str:
    """The first few of a list of keys, for an error message (``a, b, c, d, e, ...``)."""
    return ", ".join(keys[:SHOW]) + (", ..." if len(keys) > SHOW else "")


def load_export(path: Path, **override_kwargs: Any) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the backbone named in the export and load its weights strictly."""
    p = Path(path)
    doc = _read(p, "state_dict", "meta")
    meta, state = doc["meta"], doc["state_dict"]
    try:
        kwargs = dict(meta["backbone_kwargs"], **override_kwargs)
        bb = build_backbone(meta["backbone"], **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise _export_error(p, f"names a backbone this harness cannot build ({type(e).__name__}: {e})") from None
    target = bb.state_dict()
    not_tensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in target if k not in state]
    unexpected = [str(k) for k in state if k not in target]
    shape = [
        f"{k}: file {tuple(v.shape)} vs backbone {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and isinstance(v, torch.Tensor) and v.shape != target[k].shape
    ]
    problems = [
        f"{len(keys)} {what}: {first_keys(keys)}"
        for what, keys in (
            ("entry(ies) not a tensor", [str(k) for k in not_tensor]),
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", shape),
        )
        if keys
    ]
    if problems:
        raise _export_error(p, f"does not match its backbone {meta['backbone']!r}: " + "; ".join(problems))
    try:
        bb.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise _export_error(p, f"does not load into its backbone {meta['backbone']!r}: {_inner_message(e)}") from None
    return bb, meta
