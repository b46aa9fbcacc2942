"""Finding model files on disk: checkpoint and VAE lists, A1111-style titles and lazy cached hashes."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from modules.errors import ValidationError

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")
VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")


class HashCache:
    """sha256 per file, cached in cache.json and invalidated by mtime (hashing 2 GB takes seconds)."""

    def __init__(self, file: Optional[Path]):
        self.file = file
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if file and file.exists():
            try:
                self._data = json.loads(file.read_text(encoding="utf-8")).get("hashes", {})
            except (OSError, ValueError):
                self._data = {}

    def sha256(self, path: Path, key: str) -> str:
        mtime = path.stat().st_mtime
        with self._lock:
            entry = self._data.get(key)
            if entry and entry.get("mtime") == mtime:
                return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            self._data[key] = {"mtime": mtime, "sha256": value}
            self._save()
        return value

    def cached(self, path: Path, key: str) -> Optional[str]:
        entry = self._data.get(key)
        try:
            if entry and entry.get("mtime") == path.stat().st_mtime:
                return entry["sha256"]
        except OSError:
            pass
        return None

    def _save(self) -> None:
        if not self.file:
            return
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        tmp.write_text(json.dumps({"hashes": self._data}, indent=1), encoding="utf-8")
        os.replace(tmp, self.file)


@dataclass
class ModelFile:
    path: Path
    name: str  # path relative to its folder, with '/' separators, extension kept (A1111's `name`)
    kind: str  # "checkpoint" or "vae": the hash cache's namespace
    hashes: HashCache

    @property
    def model_name(self) -> str:
        """Name without extension: what infotext's `Model:` holds."""
        return Path(self.name).stem if self.kind == "checkpoint" else Path(self.name).name

    @property
    def sha256(self) -> str:
        return self.hashes.sha256(self.path, f"{self.kind}/{self.name}")

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        """`name [shorthash]` once the hash is known; A1111 shows the bare name until then."""
        cached = self.hashes.cached(self.path, f"{self.kind}/{self.name}")
        return f"{self.name} [{cached[:10]}]" if cached else self.name

    def matches(self, query: str) -> bool:
        query = query.strip()
        bare = query.rsplit(" [", 1)[0] if query.endswith("]") else query
        if bare in (self.name, self.model_name, Path(self.name).name, Path(self.name).stem, str(self.path)):
            return True
        return False

    def matches_hash(self, query: str) -> bool:
        query = query.strip().lower()
        if query.endswith("]") and " [" in query:
            query = query.rsplit(" [", 1)[1][:-1]
        if len(query) < 8 or any(c not in "0123456789abcdef" for c in query):
            return False
        cached = self.hashes.cached(self.path, f"{self.kind}/{self.name}")
        return bool(cached and cached.startswith(query))


def scan(folder: Path, extensions: Iterable[str], exclude_suffixes: tuple[str, ...] = ()) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        lower = path.name.lower()
        if path.is_file() and lower.endswith(tuple(extensions)) and not lower.endswith(exclude_suffixes):
            found.append(path)
    return sorted(found, key=lambda p: str(p.relative_to(folder)).lower())


class ModelList:
    """The checkpoints (or VAEs) in one folder, refreshed on demand."""

    def __init__(self, folder: Path, kind: str, hashes: HashCache, extensions: tuple[str, ...],
                 exclude_suffixes: tuple[str, ...] = (), field: str = "sd_model_checkpoint"):
        self.folder, self.kind, self.hashes = folder, kind, hashes
        self.extensions, self.exclude_suffixes, self.field = extensions, exclude_suffixes, field
        self._items: list[ModelFile] = []
        self._extra: list[ModelFile] = []
        self.refresh()

    def refresh(self) -> list[ModelFile]:
        paths = scan(self.folder, self.extensions, self.exclude_suffixes)
        self._items = [ModelFile(p, p.relative_to(self.folder).as_posix(), self.kind, self.hashes) for p in paths]
        return self.items

    def add_file(self, path: Path) -> ModelFile:
        """A file outside the folder (--ckpt) joins the list."""
        path = Path(path).resolve()
        for item in self.items:
            if item.path.resolve() == path:
                return item
        item = ModelFile(path, path.name, self.kind, self.hashes)
        self._extra.append(item)
        return item

    @property
    def items(self) -> list[ModelFile]:
        return self._extra + self._items

    def find(self, query: str) -> Optional[ModelFile]:
        for item in self.items:
            if item.matches(query):
                return item
        for item in self.items:
            if item.matches_hash(query):
                return item
        return None

    def resolve(self, query: str) -> ModelFile:
        item = self.find(query)
        if item is None:
            names = ", ".join(i.name for i in self.items) or f"none; put files in {self.folder}"
            raise ValidationError(self.field, f"unknown {self.kind} '{query}'; available: {names}")
        return item


def checkpoint_list(folder: Path, hashes: HashCache) -> ModelList:
    # VAEs kept beside checkpoints (`x.vae.safetensors`) are not checkpoints.
    return ModelList(folder, "checkpoint", hashes, CHECKPOINT_EXTENSIONS,
                     exclude_suffixes=(".vae.safetensors", ".vae.ckpt", ".vae.pt"))


def vae_list(folder: Path, hashes: HashCache) -> ModelList:
    return ModelList(folder, "vae", hashes, VAE_EXTENSIONS, field="sd_vae")


def sibling_vae(checkpoint: Path) -> Optional[Path]:
    """A1111's automatic VAE: `<checkpoint stem>.vae.safetensors` (or .pt/.ckpt) beside the checkpoint."""
    for ext in VAE_EXTENSIONS:
        candidate = checkpoint.with_name(checkpoint.stem + ".vae" + ext)
        if candidate.exists():
            return candidate
    return None
