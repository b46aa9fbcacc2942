"""Textual-inversion embedding files in embeddings/ (and its subfolders), read as A1111 reads them.

Formats:
  .pt   A1111's  {"string_to_param": {"*": tensor[n, dim]}, "name", "step", "sd_checkpoint", ...}
  .bin  diffusers concepts  {"<token>": tensor[dim] or [n, dim]}
  .safetensors  SDXL {"clip_l": [n, 768], "clip_g": [n, 1280]}, kohya {"emb_params": [n, dim]}, or one tensor
Pickles load with weights_only=True; one that needs more than tensors and plain values is refused.
An embedding is triggered by its file name (without extension) in a prompt. One whose width doesn't match
the loaded model's text encoder(s) is skipped (A1111's `skipped` list). The hash is the file's sha256;
infotexts carry its first 12 characters (`TI hashes`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from modules import extension_api as api

log = logging.getLogger(__name__)

EXTENSIONS = (".pt", ".bin", ".safetensors")


class EmbeddingFormatError(ValueError):
    pass


@dataclass
class EmbeddingFile:
    name: str
    path: Path
    stamp: tuple[int, int]  # (size, mtime_ns): reread when it changes
    vectors: list[torch.Tensor]  # [vec] or, for SDXL files, [clip_l, clip_g]
    step: Optional[int] = None
    sd_checkpoint: Optional[str] = None
    sd_checkpoint_name: Optional[str] = None

    @property
    def is_sdxl(self) -> bool:
        return len(self.vectors) == 2

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width (both widths summed for an SDXL pair)."""
        return sum(int(v.shape[-1]) for v in self.vectors)

    @property
    def vector_count(self) -> int:
        return int(self.vectors[0].shape[0])

    @property
    def shorthash(self) -> str:
        return api.sha256_file(self.path)[:12]

    def fits(self, target: api.EmbeddingTarget) -> bool:
        """Its widths are the text encoders' widths (one tensor per encoder)."""
        return tuple(int(v.shape[-1]) for v in self.vectors) == tuple(target.widths)

    def api_entry(self) -> dict[str, Any]:
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint, "sd_checkpoint_name": self.sd_checkpoint_name,
                "shape": self.shape, "vectors": self.vector_count}


def read_embedding(path: Path) -> EmbeddingFile:
    """Load one file; EmbeddingFormatError / UnsafeFileError / CheckpointError say why it can't be used."""
    if path.suffix.lower() == ".safetensors":
        data: Any = api.load_tensors(path)
    else:
        data = api.load_pickle(path, allow=(torch.nn.ParameterDict,))  # early TI files kept one
    if not isinstance(data, dict) or not data:
        raise EmbeddingFormatError(f"{path.name} is not an embedding (no tensors in it)")
    extra: dict[str, Any] = {}
    if "string_to_param" in data:  # A1111 / original textual inversion
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingFormatError(f"{path.name}: string_to_param must hold exactly one tensor")
        vectors = [_as_matrix(next(iter(params.values())), path)]
        extra = {k: data.get(k) for k in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    elif "clip_l" in data and "clip_g" in data:  # SDXL
        vectors = [_as_matrix(data["clip_l"], path), _as_matrix(data["clip_g"], path)]
        if vectors[0].shape[0] != vectors[1].shape[0]:
            raise EmbeddingFormatError(f"{path.name}: clip_l and clip_g have different vector counts")
    else:  # diffusers concepts, kohya emb_params: one tensor
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingFormatError(f"{path.name}: expected one tensor, found {len(tensors)}; not an embedding")
        vectors = [_as_matrix(tensors[0], path)]
    stat = path.stat()
    step = extra.get("step")
    return EmbeddingFile(path.stem, path, (stat.st_size, stat.st_mtime_ns), vectors,
                         step=int(step) if isinstance(step, (int, float)) else None,
                         sd_checkpoint=_text(extra.get("sd_checkpoint")),
                         sd_checkpoint_name=_text(extra.get("sd_checkpoint_name")))


def _as_matrix(value: Any, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise EmbeddingFormatError(f"{path.name}: the embedding is not a float tensor")
    vec = value.detach().to(torch.float32)
    if vec.dim() == 1:
        vec = vec.unsqueeze(0)
    if vec.dim() != 2 or vec.shape[0] == 0:
        raise EmbeddingFormatError(f"{path.name}: expected vectors of shape [count, width], got {tuple(value.shape)}")
    return vec


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


class EmbeddingLibrary:
    """The files, reread when the folder's contents change, and one lookup table per kind of model."""

    def __init__(self, folder: Callable[[], Path]):
        self.folder = folder
        self.files: dict[str, EmbeddingFile] = {}
        self.failed: dict[str, str] = {}  # file name -> why it can't be used
        self._signature: Optional[tuple] = None
        self._tables: dict[Any, tuple[tuple, api.EmbeddingTable]] = {}
        self._lock = threading.RLock()

    def _scan(self) -> tuple:
        folder = self.folder()
        if not folder.is_dir():
            return (str(folder),)
        entries = []
        for path in folder.rglob("*"):
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                stat = path.stat()
                entries.append((str(path), stat.st_size, stat.st_mtime_ns))
        return (str(folder), *sorted(entries, key=lambda e: e[0].lower()))

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            signature = self._scan()
            if signature == self._signature and not force:
                return
            old = {f.path: f for f in self.files.values()}
            files: dict[str, EmbeddingFile] = {}
            failed: dict[str, str] = {}
            for entry in signature[1:]:
                path, size, mtime = Path(entry[0]), entry[1], entry[2]
                if size == 0:
                    continue
                previous = old.get(path)
                try:
                    unchanged = previous is not None and previous.stamp == (size, mtime)
                    loaded = previous if unchanged else read_embedding(path)
                except Exception as e:  # reported per file; the others still load
                    failed[path.name] = str(e)
                    log.warning("embedding %s can't be used: %s", path.name, e)
                    continue
                if loaded.name in files:
                    log.warning("embedding %s: another file has the same name; %s is used",
                                path.name, files[loaded.name].path.name)
                    continue
                files[loaded.name] = loaded
            self.files, self.failed, self._signature = files, failed, signature
            self._tables.clear()

    def split(self, target: Optional[api.EmbeddingTarget]) -> tuple[list[EmbeddingFile], list[EmbeddingFile]]:
        """(fitting the model, skipped); without a model every file counts as fitting."""
        self.refresh()
        return self._split(target)

    def _split(self, target: Optional[api.EmbeddingTarget]) -> tuple[list[EmbeddingFile], list[EmbeddingFile]]:
        files = sorted(self.files.values(), key=lambda f: f.name.lower())
        if target is None:
            return files, []
        return [f for f in files if f.fits(target)], [f for f in files if not f.fits(target)]

    def lookup(self, target: api.EmbeddingTarget, with_hashes: bool = True) -> Optional[api.EmbeddingTable]:
        """The table for this kind of model; the same object (and version) while nothing changes."""
        with self._lock:
            self.refresh()
            key = (target.key, with_hashes)
            cached = self._tables.get(key)
            if cached is not None and cached[0] == self._signature:
                return cached[1]
            fitting, _ = self._split(target)
            embeddings = [api.Embedding(f.name, list(f.vectors), f.shorthash if with_hashes else None)
                          for f in fitting]
            table = api.EmbeddingTable(target.tokenize, embeddings)
            self._tables[key] = (self._signature, table)
            return table

    def api_list(self) -> dict[str, dict[str, Any]]:
        """/sdapi/v1/embeddings: {"loaded": {name: {...}}, "skipped": {name: {...}}} for the loaded model."""
        loaded, skipped = self.split(api.current_embedding_target())
        return {"loaded": {f.name: f.api_entry() for f in loaded}, "skipped": {f.name: f.api_entry() for f in skipped}}
