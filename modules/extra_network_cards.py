"""Cards for the extra-networks browser: what an extension shows for each LoRA, embedding, hypernetwork...

An extension registers a provider per kind; the UI asks for every kind's cards when it draws the browser.
A card gives the name, the preview image (A1111's `name.preview.png` beside the file), the text a click
inserts into the prompt (e.g. `<lora:name:1>`), and free-form metadata.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from modules import extension_callbacks as callbacks

PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")


@dataclass
class ExtraNetworkCard:
    kind: str  # "lora", "embedding", ... (the tab it shows in)
    name: str
    tag: str  # inserted into the prompt on click
    path: Optional[Path] = None
    preview: Optional[Path] = None
    description: str = ""
    search_terms: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "tag": self.tag,
                "path": str(self.path) if self.path else None,
                "preview": str(self.preview) if self.preview else None, "description": self.description,
                "search_terms": list(self.search_terms), "metadata": dict(self.metadata)}


def find_preview(path: Path) -> Optional[Path]:
    """`name.preview.png` (or .jpg/.jpeg/.webp/.gif), then `name.png` & co. beside `path`, as A1111 looks."""
    base = path.with_suffix("")
    for stem in (f"{base.name}.preview", base.name):
        for ext in PREVIEW_EXTENSIONS:
            candidate = base.with_name(f"{stem}.{ext}")
            if candidate.is_file():
                return candidate
    return None


def card_for_file(kind: str, path: Path, tag: Optional[str] = None, **kwargs: Any) -> ExtraNetworkCard:
    """A card for a model file: its stem as name, its preview, and `<kind:name:1>` as tag unless given."""
    name = path.stem
    return ExtraNetworkCard(kind, name, tag if tag is not None else f"<{kind}:{name}:1>", path, find_preview(path),
                            **kwargs)


_providers: dict[str, tuple[Callable[[], list[ExtraNetworkCard]], callbacks.Owner]] = {}
_lock = threading.Lock()


def register_extra_network_cards(kind: str, provider: Callable[[], list[ExtraNetworkCard]]) -> None:
    """provider() -> the cards for `kind`, read fresh each time the browser is drawn or refreshed."""
    with _lock:
        _providers[kind] = (provider, callbacks.current_owner())


def unregister_extra_network_cards(kind: str) -> None:
    with _lock:
        _providers.pop(kind, None)


def clear() -> None:
    with _lock:
        _providers.clear()


def extra_network_cards() -> dict[str, list[ExtraNetworkCard]]:
    """Every kind's cards; a provider that fails is reported (with its extension) and shows none."""
    with _lock:
        providers = dict(_providers)
    cards: dict[str, list[ExtraNetworkCard]] = {}
    for kind, (provider, owner) in providers.items():
        try:
            cards[kind] = list(provider())
        except Exception as e:
            callbacks.record_failure(owner.extension, f"extra-network cards for '{kind}'", e)
            cards[kind] = []
    return cards
