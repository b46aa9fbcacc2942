"""A1111 hypernetworks through `<hypernet:name:strength>` prompt tags.

Each hypernetwork changes the input of every attention layer's key and value projections whose width it has
a layer for (A1111 applies them to self- and cross-attention alike): context → context + module(context) ×
strength, several hypernetworks one after another. When the job ends the hooks are taken away.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import torch
from hypernetwork_files import Hypernetwork, read_hypernetwork

from modules import extension_api as api

log = logging.getLogger(__name__)

OWNER = "hypernet"


KEEP_LOADED = 4  # hypernetworks kept in memory between jobs, most recently used first


class HypernetworkLibrary:
    def __init__(self) -> None:
        self._loaded: "OrderedDict[tuple[Path, float], Hypernetwork]" = OrderedDict()
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        """name → path for every .pt in models/hypernetworks (A1111 lists them this way; "None" is skipped)."""
        folder = api.model_dir("hypernetworks")
        if not folder.is_dir():
            return {}
        found = {}
        for path in sorted(folder.rglob("*.pt"), key=lambda p: str(p).lower()):
            if path.is_file() and path.stem != "None":
                found.setdefault(path.stem, path)
        return found

    def load(self, name: str) -> Optional[Hypernetwork]:
        path = self.files().get(name)
        if path is None:
            return None
        key = (path, path.stat().st_mtime)
        with self._lock:
            if key not in self._loaded:
                for stale in [k for k in self._loaded if k[0] == path]:
                    del self._loaded[stale]
                self._loaded[key] = read_hypernetwork(path)
            self._loaded.move_to_end(key)
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
            return self._loaded[key]

    def api_list(self) -> list[dict[str, Any]]:
        """/sdapi/v1/hypernetworks: [{name, path}]."""
        return [{"name": name, "path": str(path)} for name, path in self.files().items()]


library = HypernetworkLibrary()


class HypernetworkNetworks(api.ExtraNetworkHandler):
    def activate(self, context: api.ExtraNetworkContext, params_list: list[api.ExtraNetworkParams]) -> None:
        active: list[tuple[Hypernetwork, float]] = []
        for params in params_list:
            if not params.items:
                continue
            name = params.items[0]
            try:
                strength = float(params.items[1]) if len(params.items) > 1 else 1.0
            except ValueError:
                context.warn(f"hypernetwork '{name}': strength {params.items[1]!r} is not a number; tag ignored")
                continue
            try:
                hypernetwork = library.load(name)
            except Exception as e:  # refused pickle, broken file: say why, go on without it
                context.warn(f"hypernetwork '{name}' can't be used: {e}")
                continue
            if hypernetwork is None:
                context.warn(f"hypernetwork '{name}' not found in {api.model_dir('hypernetworks')}; tag ignored")
                continue
            active.append((hypernetwork, strength))
        if not active:
            api.set_attention_kv_hook(context.model, OWNER, None)
            return
        device = next(context.model.unet.parameters()).device
        for hypernetwork, _ in active:
            hypernetwork.to(device)
        api.set_attention_kv_hook(context.model, OWNER, _hook(active))

    def deactivate(self, context: api.ExtraNetworkContext) -> None:
        api.set_attention_kv_hook(context.model, OWNER, None)


def _hook(active: list[tuple[Hypernetwork, float]]):
    def apply(context: torch.Tensor, which: str, layer: api.AttentionLayer) -> torch.Tensor:
        index = 0 if which == "k" else 1
        x = context
        for hypernetwork, strength in active:
            pair = hypernetwork.layers.get(int(x.shape[-1]))
            if pair is None:
                continue
            x = pair[index](x.float(), strength).to(context.dtype)
        return x

    return apply


def cards() -> list[api.ExtraNetworkCard]:
    folder = api.model_dir("hypernetworks")
    return [api.card_for_file("hypernetwork", path, tag=f"<hypernet:{name}:1>",
                              search_terms=[name, str(path.relative_to(folder))])
            for name, path in library.files().items()]


api.register_extra_network("hypernet", HypernetworkNetworks())
api.register_extra_network_cards("hypernetwork", cards)
api.register_api_list("hypernetworks", library.api_list)
