"""The extra-networks card browser under a tab's prompt: the cards extensions provide (modules/extra_network_cards),
one kind at a time, each with its preview; clicking a card puts its tag into the prompt (or takes it out again,
as A1111 does when the tag is already there)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

import gradio as gr
from PIL import Image

from modules.extra_network_cards import ExtraNetworkCard, extra_network_cards
from modules.ui.common import UIContext, note_html


@lru_cache(maxsize=1)
def placeholder() -> Image.Image:
    """What a card without a preview image shows."""
    return Image.new("RGB", (96, 96), (150, 150, 160))


def cards_of(kind: Optional[str]) -> list[ExtraNetworkCard]:
    return list(extra_network_cards().get(kind or "", []))


def kinds() -> list[str]:
    return sorted(extra_network_cards())


def gallery_items(cards: list[ExtraNetworkCard]) -> list[tuple[Any, str]]:
    return [(str(c.preview) if c.preview else placeholder(), c.name) for c in cards]


def toggle_tag(prompt: str, tag: str) -> str:
    """Add `tag` at the end of the prompt, or remove it when the prompt already has it."""
    prompt = prompt or ""
    if not tag:
        return prompt
    if tag in prompt:
        before, _, after = prompt.partition(tag)
        before, after = before.rstrip(), after.lstrip()
        if before.endswith(",") and (not after or after.startswith(",")):
            before = before[:-1].rstrip()
        return f"{before} {after}".strip() if before and after else (before or after)
    return f"{prompt.rstrip()} {tag}".strip() if prompt.strip() else tag


def showing(kind: Optional[str]) -> tuple[Any, list[str], str]:
    """Gallery update, the cards' tags (in gallery order), and a note, for one kind."""
    cards = cards_of(kind)
    note = "" if cards else note_html("No cards of this kind: put files in its models folder, then Refresh.")
    return gr.update(value=gallery_items(cards), selected_index=None), [c.tag for c in cards], note


def build(ctx: UIContext, tab: str, prompt: Any) -> None:
    found = kinds()
    first = found[0] if found else None
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row():
            kind = gr.Radio(choices=found, value=first, label="Kind", elem_id=f"{tab}_extra_networks_kind",
                            scale=5)
            refresh = gr.Button("Refresh", elem_id=f"{tab}_extra_networks_refresh", scale=0, min_width=100)
        shown = cards_of(first)
        text = showing(first)[2] if first else note_html(
            "No extra networks: LoRA, embeddings and hypernetworks show here when their extensions are enabled.")
        note = gr.HTML(text, elem_id=f"{tab}_extra_networks_note")
        cards = gr.Gallery(value=gallery_items(shown), label="Cards",
                           show_label=False, columns=8, height=260, object_fit="contain", allow_preview=False,
                           fit_columns=False,
                           interactive=False, elem_id=f"{tab}_extra_networks_cards")
        tags = gr.State([c.tag for c in shown])

    def on_kind(choice: Optional[str]):
        return showing(choice)

    def on_refresh(choice: Optional[str]):
        available = kinds()
        choice = choice if choice in available else (available[0] if available else None)
        gallery, tag_list, text = showing(choice)
        return gr.update(choices=available, value=choice), gallery, tag_list, text

    def on_select(current: str, tag_list: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        if not tag_list or not 0 <= index < len(tag_list):
            return gr.update()
        return toggle_tag(current, tag_list[index])

    kind.change(on_kind, kind, [cards, tags, note], queue=False, show_progress="hidden")
    refresh.click(on_refresh, kind, [kind, cards, tags, note], queue=False)
    cards.select(on_select, [prompt, tags], prompt, queue=False, show_progress="hidden")
