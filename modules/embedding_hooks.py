"""Where textual-inversion embeddings come from: providers that extensions register.

A provider is called with an `EmbeddingTarget` (the loaded model's family, its text encoders' widths and its
tokenizer) and returns an `EmbeddingLookup` for that model (usually an `EmbeddingTable`), or None. Processing
asks once per job (`lookup_for(model)`); the prompt encoder then inserts the vectors of every embedding whose
name appears in a prompt (modules/text_encoding.py: an embedding is never split across 75-token chunks).

The embeddings a batch used are written into its infotext as A1111 writes them,
`TI hashes: "name: hash, ..."` (positive prompt first), for those that carry a `hash`.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

from modules.text_encoding import Embedding, EmbeddingLookup, EncodeSettings, tokenize_prompt

log = logging.getLogger(__name__)

TI_HASHES = "TI hashes"


@dataclass(frozen=True)
class EmbeddingTarget:
    """The model embeddings are wanted for."""

    family: str  # "sd1", "sd2", "sd2-v" or "sdxl"
    widths: tuple[int, ...]  # hidden size of each text encoder, in order (SDXL: CLIP-L, then OpenCLIP-G)
    tokenize: Callable[[str], list[int]]  # the model's tokenizer, without start and end tokens

    @property
    def key(self) -> Hashable:
        """Models with the same key take the same embeddings (all families share one tokenizer)."""
        return self.family, self.widths


EmbeddingProvider = Callable[[EmbeddingTarget], Optional[EmbeddingLookup]]

_providers: list[tuple[EmbeddingProvider, str]] = []
_lock = threading.Lock()


def register_embedding_provider(provider: EmbeddingProvider, owner: str = "") -> None:
    with _lock:
        _providers.append((provider, owner))


def unregister_embedding_provider(provider: EmbeddingProvider) -> None:
    with _lock:
        _providers[:] = [(p, o) for p, o in _providers if p is not provider]


def target_for(model: Any) -> EmbeddingTarget:
    """The EmbeddingTarget of a loaded model (LoadedModel)."""
    tokenizer = model.tokenizer

    def tokenize(text: str) -> list[int]:
        return tokenizer([text], add_special_tokens=False, truncation=False).input_ids[0]

    widths = tuple(int(encoder.config.hidden_size) for encoder in model.text_encoders)
    return EmbeddingTarget(model.family.name, widths, tokenize)


def lookup_for(model: Any) -> Optional[EmbeddingLookup]:
    """What the registered providers offer for this model: one lookup, or several searched in order."""
    if model is None or not getattr(model, "text_encoders", None):
        return None
    with _lock:
        providers = list(_providers)
    if not providers:
        return None
    target = target_for(model)
    found = []
    for provider, owner in providers:
        try:
            lookup = provider(target)
        except Exception as e:  # a broken provider costs its embeddings, never the job
            from modules.extension_callbacks import record_failure

            record_failure(owner, "embedding provider", e)
            continue
        if lookup is not None:
            found.append(lookup)
    if not found:
        return None
    return found[0] if len(found) == 1 else ChainedLookup(found)


class ChainedLookup:
    """Several lookups, the first that knows a name wins."""

    def __init__(self, lookups: Sequence[EmbeddingLookup]):
        self.lookups = list(lookups)

    @property
    def version(self) -> Hashable:
        return tuple(lookup.version for lookup in self.lookups)

    def find(self, tokens: Sequence[int], position: int) -> Optional[tuple[Embedding, int]]:
        for lookup in self.lookups:
            found = lookup.find(tokens, position)
            if found is not None:
                return found
        return None


def used_embeddings(texts: Sequence[str], tokenize: Callable[[list[str]], list[list[int]]], comma_token: int,
                    settings: EncodeSettings, lookup: Optional[EmbeddingLookup]) -> list[Embedding]:
    """The embeddings these prompt texts use, in order of first use (tokenizing only, nothing is encoded)."""
    if lookup is None:
        return []
    found: dict[str, Embedding] = {}
    for text in dict.fromkeys(texts):
        chunks, _ = tokenize_prompt(text, tokenize, comma_token, settings, lookup)
        for chunk in chunks:
            for _, embedding in chunk.fixes:
                found.setdefault(embedding.name, embedding)
    return list(found.values())


def note_used_embeddings(encoder: Any, prompts: Sequence[str], negative_prompts: Sequence[str],
                         settings: EncodeSettings, extra_params: dict[str, object]) -> None:
    """Write (or clear) a batch's `TI hashes` infotext entry, as A1111 does: "name: hash, ..."."""
    used = used_embeddings([*prompts, *negative_prompts], encoder.tokenize, encoder.comma_token, settings,
                           encoder.embeddings)
    hashes = []
    for embedding in used:
        if embedding.hash:
            name = embedding.name.replace(":", "").replace(",", "")
            hashes.append(f"{name}: {embedding.hash}")
    if hashes:
        extra_params[TI_HASHES] = ", ".join(hashes)
    else:
        extra_params.pop(TI_HASHES, None)
