"""The LoRA files in models/Lora: names, aliases, metadata, hashes and a small cache of loaded tensors.

As A1111: a LoRA's `name` is its file name without extension; its `alias` is the training name from the
file's metadata (`ss_output_name`), else the name. A tag may use either, except an alias that another file
also uses (then only names work). The hash is A1111's: kohya's `sshs_model_hash` from the metadata when it is
a proper sha256, else the sha256 of the safetensors tensor data (`addnet_hash`), or of the whole file for
.pt/.ckpt; `shorthash` is its first 12 characters (what `Lora hashes:` in the infotext holds).
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from modules import extension_api as api

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                  "ss_tag_frequency": 20}


@dataclass
class LoraFile:
    name: str
    path: Path
    mtime: float
    metadata: dict[str, Any] = field(default_factory=dict)
    _hash: Optional[str] = None

    @property
    def alias(self) -> str:
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"

    @property
    def hash(self) -> str:
        if self._hash is None:
            claimed = str(self.metadata.get("sshs_model_hash") or "").lower()
            if _SHA256.match(claimed):
                self._hash = claimed
            else:
                self._hash = api.addnet_hash(self.path) if self.is_safetensors else api.sha256_file(self.path)
        return self._hash

    @property
    def shorthash(self) -> str:
        return self.hash[:12]

    @property
    def sd_version(self) -> str:
        """"SDXL", "SD2", "SD1" or "Unknown", from the training metadata (A1111's detect_version)."""
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            return "SDXL"
        if str(self.metadata.get("ss_v2", "")) == "True":
            return "SD2"
        return "SD1" if self.metadata else "Unknown"

    def user_metadata(self) -> dict[str, Any]:
        """A1111's `<name>.json` beside the file: description, activation text, preferred weight, notes."""
        sidecar = self.path.with_suffix(".json")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


class LoraLibrary:
    def __init__(self, folder: Callable[[], Path]):
        self.folder = folder
        self._files: list[LoraFile] = []
        self._scanned_folder: Optional[Path] = None
        self._lock = threading.RLock()
        self._tensors: "OrderedDict[tuple[Path, float], dict]" = OrderedDict()

    # -- listing ------------------------------------------------------------------------------------------
    def refresh(self) -> list[LoraFile]:
        folder = self.folder()
        known = {f.path: f for f in self._files}
        found = []
        paths = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS),
                       key=lambda p: str(p.relative_to(folder)).lower()) if folder.is_dir() else []
        for path in paths:
            mtime = path.stat().st_mtime
            old = known.get(path)
            if old is not None and old.mtime == mtime:
                found.append(old)
                continue
            metadata: dict[str, Any] = {}
            if path.suffix.lower() == ".safetensors":
                try:
                    metadata = api.read_safetensors_metadata(path)
                except Exception as e:  # a broken file is listed, and fails when used, with its reason
                    log.warning("LoRA %s: can't read metadata: %s", path.name, e)
            metadata.pop("ssmd_cover_images", None)  # large images, not text
            metadata = dict(sorted(metadata.items(), key=lambda kv: METADATA_ORDER.get(kv[0], 999)))
            found.append(LoraFile(path.stem, path, mtime, metadata))
        with self._lock:
            self._files, self._scanned_folder = found, folder
        return list(found)

    def files(self) -> list[LoraFile]:
        if self._scanned_folder != self.folder():
            self.refresh()
        return list(self._files)

    def forbidden_aliases(self) -> set[str]:
        """Aliases that two files claim, or that are another file's name: not usable in tags (A1111)."""
        seen: dict[str, int] = {}
        for f in self.files():
            for key in {f.name, f.alias}:
                seen[key] = seen.get(key, 0) + 1
        names = {f.name for f in self.files()}
        return {f.alias.lower() for f in self.files()
                if f.alias != f.name and (seen[f.alias] > 1 or f.alias in names)} | {"none"}

    def find(self, name: str) -> Optional[LoraFile]:
        """By name or alias, as A1111 resolves `<lora:NAME:...>`; rescans the folder once when not found."""
        for attempt in range(2):
            found = self._find(name)
            if found is not None or attempt:
                return found
            self.refresh()
        return None

    def _find(self, name: str) -> Optional[LoraFile]:
        files = self.files()
        for f in files:
            if f.name == name:
                return f
        if name.lower() in self.forbidden_aliases():
            return None
        for f in files:
            if f.alias == name:
                return f
        return None

    def find_by_hash(self, shorthash: str) -> Optional[LoraFile]:
        shorthash = shorthash.strip().lower()
        if len(shorthash) < 8:
            return None
        for f in self.files():
            try:
                if f.hash.startswith(shorthash):
                    return f
            except OSError:
                continue
        return None

    def preferred_name(self, f: LoraFile) -> str:
        """What a card puts in the tag: the alias, unless the setting says file name or the alias is taken."""
        if api.get_setting("lora_preferred_name") == "Filename" or f.alias.lower() in self.forbidden_aliases():
            return f.name
        return f.alias

    # -- loading ------------------------------------------------------------------------------------------
    def tensors(self, f: LoraFile, keep: int = 0) -> dict:
        """The file's tensors (safetensors, or a weights-only pickle); the last `keep` stay in memory."""
        key = (f.path, f.mtime)
        with self._lock:
            if key in self._tensors:
                self._tensors.move_to_end(key)
                return self._tensors[key]
        loaded = api.load_tensors(f.path)
        with self._lock:
            self._tensors[key] = loaded
            while len(self._tensors) > max(keep, 0):
                self._tensors.popitem(last=False)
        return loaded

    def api_list(self) -> list[dict[str, Any]]:
        """/sdapi/v1/loras: [{name, alias, path, metadata}] (A1111's shape)."""
        return [{"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": _jsonable(f.metadata)}
                for f in self.refresh()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
