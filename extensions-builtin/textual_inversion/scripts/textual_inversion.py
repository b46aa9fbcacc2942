"""Textual-inversion embeddings from embeddings/: write a file's name in a prompt and its vectors go there.

The prompt encoder inserts the vectors as tokens (an embedding is never split across 75-token chunks);
embeddings whose width doesn't fit the loaded model are skipped, and listed as such by /sdapi/v1/embeddings.
Used embeddings go into the infotext as `TI hashes: "name: hash, ..."`.
"""
from __future__ import annotations

from typing import Optional

from ti_library import EmbeddingLibrary

from modules import extension_api as api

api.register_settings("Textual inversion", {
    "textual_inversion_add_hashes_to_infotext": api.setting(True, "Add Textual Inversion hashes to infotext"),
})

library = EmbeddingLibrary(lambda: api.model_dir("embeddings"))


def embeddings_for(target: api.EmbeddingTarget) -> Optional[api.EmbeddingLookup]:
    with_hashes = bool(api.get_setting("textual_inversion_add_hashes_to_infotext"))
    return library.lookup(target, with_hashes)


def cards() -> list[api.ExtraNetworkCard]:
    fitting, skipped = library.split(api.current_embedding_target())
    found = []
    for f, fits in [(f, True) for f in fitting] + [(f, False) for f in skipped]:
        found.append(api.card_for_file(
            "textual_inversion", f.path, tag=f.name,
            search_terms=[f.name, str(f.path.relative_to(api.model_dir("embeddings")))],
            metadata={"fits_model": fits, **f.api_entry()}))
    return found


def refresh() -> None:
    library.refresh(force=True)


api.register_embedding_provider(embeddings_for)
api.register_extra_network_cards("textual_inversion", cards)
api.register_api_list("embeddings", library.api_list, refresh=refresh)
