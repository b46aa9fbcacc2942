"""Reading model files that users drop in folders, safely, and hashing them as A1111 does.

`.safetensors` are read through a checked header. Anything else is a pickle and is loaded with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists, tuples and dicts come back; a pickle that
needs any other object (code, a class) is refused with `UnsafeFileError` and a reason the user can act on.

Hashes: `sha256_file` is the whole file's sha256 (A1111's model, embedding and hypernetwork hashes);
`addnet_hash` is the sha256 of a safetensors file's tensor data only, without its header (kohya's
`sshs_model_hash`, A1111's LoRA hash). Both are cached in memory by path, size and modification time.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import struct
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from modules.errors import CheckpointError, UnsafeFileError

_hash_cache: dict[tuple[str, str, int, int], str] = {}
_hash_lock = threading.Lock()


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors file or a plain pickle (weights_only); anything else raises."""
    return read_state_dict(Path(path))


def load_pickle(path: Path, allow: Sequence[type] = ()) -> Any:
    """The object in a .pt/.bin/.ckpt pickle, loaded with weights_only=True; refused if it needs more.

    `allow` names further torch classes the file may hold (e.g. torch.nn.ParameterDict, which early
    textual-inversion files used); they are rebuilt from plain values, never from code in the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(str(path), map_location="cpu", weights_only=True)  # legacy non-zip pickle
    except pickle.UnpicklingError as e:
        reason = str(e).split("\n")[0][:300]
        raise UnsafeFileError(f"{path.name}: refused to load: the pickle needs more than plain tensors and "
                              f"values ({reason}). Convert it to .safetensors with a trusted tool.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: cannot read file ({e})") from None


MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def validate_safetensors_header(path: Path) -> dict:
    """Check the header before anything maps the file: a huge, lying or truncated header is an error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name}: file is too short to be safetensors ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise CheckpointError(f"{path.name}: safetensors header claims {header_len} bytes; the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as e:
            raise CheckpointError(f"{path.name}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: safetensors header is not a JSON object")
    data_size = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            expected = count * SAFETENSORS_DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: tensor '{name}' has a malformed header entry") from None
        if not 0 <= start <= end <= data_size:
            raise CheckpointError(f"{path.name}: tensor '{name}' lies outside the file (truncated or corrupt)")
        if expected and end - start != expected:
            raise CheckpointError(f"{path.name}: tensor '{name}' size disagrees with its shape (corrupt file)")
    return header


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
SKIPPED_PREFIXES = ("model_ema.",)  # EMA copies are never used for inference; don't even read them


def read_safetensors(path: Path, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Read each tensor into its own buffer and cast it to `dtype` there.

    safetensors' own loader maps the file lazily and a dtype change then allocates a second full copy;
    reading tensor by tensor and converting fp16↔bf16 in place halves the memory traffic, and skipping
    EMA keys never reads them at all.
    """
    header = validate_safetensors_header(path)
    base = 8 + struct.unpack("<Q", path.open("rb").read(8))[0]
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
            if name == "__metadata__" or name.startswith(SKIPPED_PREFIXES):
                continue
            stored = SAFETENSORS_DTYPES.get(info["dtype"])
            if stored is None:
                raise CheckpointError(f"{path.name}: tensor '{name}' has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=stored)
            raw = tensor.reshape(-1).view(torch.uint8).numpy()
            f.seek(base + start)
            if f.readinto(memoryview(raw)) != end - start:
                raise CheckpointError(f"{path.name}: tensor '{name}' is cut short (truncated file)")
            tensors[name] = _cast(tensor, dtype)
    return tensors


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is None or tensor.dtype == dtype or not tensor.is_floating_point():
        return tensor
    if tensor.element_size() == dtype.itemsize:  # fp16 <-> bf16: same size, convert where it lies
        converted = tensor.view(dtype)
        converted.copy_(tensor)
        return converted
    return tensor.to(dtype)


def read_state_dict(path: Path, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a pickle loaded with weights_only=True (anything else refused).

    Floating-point tensors are cast to `dtype` when given.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            return read_safetensors(path, dtype)
        except OSError as e:
            raise CheckpointError(f"{path.name}: cannot read safetensors file ({e})") from None
    data = load_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: the file holds no state dict")
    # Out of place: tensors in a pickle may share one storage, so converting one in place would change another.
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in data.items()
            if isinstance(v, torch.Tensor) and not k.startswith(SKIPPED_PREFIXES)}




def read_safetensors_metadata(path: Path) -> dict[str, Any]:
    """The `__metadata__` of a safetensors file; values that hold JSON objects or lists are decoded."""
    header = validate_safetensors_header(Path(path))
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        return {}
    result: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        result[str(key)] = value
    return result


def sha256_file(path: Path) -> str:
    """sha256 of the whole file."""
    return _cached(Path(path), "sha256", lambda f: f.seek(0))


def addnet_hash(path: Path) -> str:
    """sha256 of a safetensors file's data after the header (the same for a file whatever its metadata)."""
    def skip_header(f) -> None:
        f.seek(0)
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + length)

    return _cached(Path(path), "addnet", skip_header)


def _cached(path: Path, kind: str, seek) -> str:
    stat = path.stat()
    key = (str(path.resolve()), kind, stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        seek(f)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value
