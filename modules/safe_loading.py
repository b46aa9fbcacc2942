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
from typing import Any, Sequence

import torch

from modules.errors import CheckpointError, UnsafeFileError
from modules.model_loading import read_state_dict, validate_safetensors_header

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
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("\n")[0][:300]
        raise UnsafeFileError(f"{path.name}: refused to load: the pickle needs more than plain tensors and "
                              f"values ({reason}). Convert it to .safetensors with a trusted tool.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: cannot read file ({e})") from None


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
