"""A small MetaImage (``.mhd`` + ``.raw``/``.zraw``, or single-file ``.mha``) reader in numpy.

SimpleITK/itk are not dependencies, and LUNA16 (shared/DATA.md A.5) ships MetaImage only.

Conventions (as ITK's MetaImageIO reads them):

- ``Offset`` (alias ``Position``/``Origin``) is the world position of voxel (0, 0, 0) in ITK's LPS frame (mm).
- ``TransformMatrix`` (alias ``Rotation``/``Orientation``) lists the direction of voxel axis 0, then axis 1,
  then axis 2: with ``D = TransformMatrix.reshape(3, 3).T`` (columns = axis directions),
  ``world_lps = Offset + D @ diag(ElementSpacing) @ (i, j, k)``.
- The binary data is x-fastest, so the bytes reshape to numpy ``[z, y, x]``; ``read_metaimage`` transposes
  that to ``[x, y, z]`` (file index order, the same order NIfTI uses) and returns the RAS affine of that
  array (LPS negated on the first two world axes), i.e. what nibabel would give for the same volume
  written as NIfTI. ``read_metaimage_canonical`` additionally reorients to RAS+ like ``datasets.base.read_nifti``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from datasets.base import DataError, spacing_problem

_TYPES = {
    "MET_CHAR": np.int8,
    "MET_UCHAR": np.uint8,
    "MET_SHORT": np.int16,
    "MET_USHORT": np.uint16,
    "MET_INT": np.int32,
    "MET_UINT": np.uint32,
    "MET_LONG": np.int32,
    "MET_ULONG": np.uint32,
    "MET_LONG_LONG": np.int64,
    "MET_ULONG_LONG": np.uint64,
    "MET_FLOAT": np.float32,
    "MET_DOUBLE": np.float64,
}
_ALIASES = {
    "Position": "Offset",
    "Origin": "Offset",
    "Rotation": "TransformMatrix",
    "Orientation": "TransformMatrix",
    "ElementSize": "_ElementSize",
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _parse_header(path: Path) -> tuple[dict[str, str], int]:
    """Header fields and the byte offset just after the header (where LOCAL data starts)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end + 1
        line = raw[pos:end].decode("latin-1").strip()
        pos = end
        if not line:
            continue
        if "=" not in line:
            raise DataError(f"{path}: malformed MetaImage header line {line[:60]!r} (expected 'Key = Value')")
        key, value = (s.strip() for s in line.split("=", 1))
        fields[_ALIASES.get(key, key)] = value
        # ElementDataFile is always the last header field; LOCAL data begins on the next byte
        if key == "ElementDataFile":
            return fields, pos
    if "ElementDataFile" not in fields:
        raise DataError(f"{path}: MetaImage header has no ElementDataFile")
    return fields, pos


def _floats(path: Path, fields: dict[str, str], key: str, n: int, default: list[float] | None) -> np.ndarray:
    if key not in fields:
        if default is None:
            raise DataError(f"{path}: MetaImage header lacks {key}")
        return np.asarray(default, float)
    try:
        vals = [float(v) for v in fields[key].split()]
    except ValueError:
        raise DataError(f"{path}: {key} = {fields[key]!r} is not numeric") from None
    if len(vals) != n:
        raise DataError(f"{path}: {key} has {len(vals)} values, expected {n}")
    return np.asarray(vals, float)


def read_metaimage(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D MetaImage as (array [x, y, z] (or [x, y, z, c]) in file index order, 4x4 RAS affine)."""
    path = Path(path)
    f, data_start = _parse_header(path)
    ndims = int(_floats(path, f, "NDims", 1, None)[0])
    if ndims != 3:
        raise DataError(f"{path}: NDims = {ndims}; only 3D MetaImages are supported")
    dims = _floats(path, f, "DimSize", 3, None).astype(int)
    if (dims <= 0).any():
        raise DataError(f"{path}: DimSize {dims.tolist()} must be positive")
    spacing = _floats(path, f, "ElementSpacing", 3, f["_ElementSize"].split() if "_ElementSize" in f else [1, 1, 1])
    if not (spacing > 0).all():  # ITK refuses these; folded into the affine, a negative side would flip the axis
        raise DataError(f"{path}: {spacing_problem(tuple(spacing.tolist()), source='ElementSpacing')}")
    offset = _floats(path, f, "Offset", 3, [0, 0, 0])
    tm = _floats(path, f, "TransformMatrix", 9, [1, 0, 0, 0, 1, 0, 0, 0, 1])
    etype = f.get("ElementType", "")
    if etype not in _TYPES:
        raise DataError(f"{path}: ElementType {etype!r} not supported; known: {sorted(_TYPES)}")
    channels = int(f.get("ElementNumberOfChannels", "1"))
    msb = f.get("BinaryDataByteOrderMSB", f.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(_TYPES[etype]).newbyteorder(">" if msb else "<")
    datafile = f["ElementDataFile"]
    if datafile.upper() == "LOCAL":
        blob = path.read_bytes()[data_start:]
        source = path
    elif datafile.upper().startswith("LIST") or "%" in datafile:
        raise DataError(f"{path}: multi-file ElementDataFile {datafile!r} is not supported")
    else:
        source = path.parent / datafile
        try:
            blob = source.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{source}: data file named by {path.name} (ElementDataFile) not found") from None
    header_size = int(f.get("HeaderSize", "0"))
    if header_size > 0:
        blob = blob[header_size:]
    n_bytes = int(np.prod(dims)) * channels * dtype.itemsize
    if f.get("CompressedData", "False").lower() == "true":
        try:
            blob = zlib.decompress(blob)
        except zlib.error as e:
            raise DataError(f"{source}: CompressedData = True but zlib cannot inflate it ({e})") from None
    elif header_size == -1:
        blob = blob[len(blob) - n_bytes :]  # -1: the data are the last bytes of the file
    if len(blob) < n_bytes:
        raise DataError(
            f"{source}: truncated: {len(blob)} bytes, expected {n_bytes} for DimSize "
            f"{dims.tolist()} x {channels} x {etype}"
        )
    arr = np.frombuffer(blob[:n_bytes], dtype=dtype).astype(dtype.newbyteorder("="))
    shape = (dims[2], dims[1], dims[0]) + ((channels,) if channels > 1 else ())
    arr = arr.reshape(shape)
    arr = np.moveaxis(arr, (0, 1, 2), (2, 1, 0))  # [z, y, x] -> [x, y, z]
    direction = tm.reshape(3, 3).T
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = offset
    return np.ascontiguousarray(arr), LPS_TO_RAS @ lps


def read_metaimage_canonical(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Like ``read_metaimage`` but reoriented to the closest RAS+ axes, as ``datasets.base.read_nifti`` does."""
    import nibabel as nib

    arr, affine = read_metaimage(path)
    img = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
    return np.asanyarray(img.dataobj), img.affine


def world_to_voxel(world: np.ndarray, affine: np.ndarray, lps: bool = True) -> np.ndarray:
    """World coordinates (rows of x, y, z in mm; LPS as in LUNA16's CSVs when ``lps``) to continuous voxel
    indices of the array ``affine`` belongs to (RAS affine, as returned by the readers above)."""
    world = np.atleast_2d(np.asarray(world, float))
    ras = world * np.array([-1.0, -1.0, 1.0]) if lps else world
    inv = np.linalg.inv(affine)
    return ras @ inv[:3, :3].T + inv[:3, 3]
