"""The extra-networks card browser's handlers: cards per kind, previews, and clicking a card toggles its tag."""
from __future__ import annotations


import pytest
from PIL import Image

from modules import extra_network_cards as cards
from modules.ui import extra_networks_ui as ui


@pytest.fixture()
def provider(tmp_path):
    saved = dict(cards._providers)
    (tmp_path / "style.safetensors").write_bytes(b"x")
    Image.new("RGB", (8, 8)).save(tmp_path / "style.preview.png")
    (tmp_path / "other.safetensors").write_bytes(b"x")
    cards.register_extra_network_cards("lora", lambda: [cards.card_for_file("lora", tmp_path / "style.safetensors"),
                                                        cards.card_for_file("lora", tmp_path / "other.safetensors")])
    yield tmp_path
    cards._providers.clear()
    cards._providers.update(saved)


def test_cards_of_a_kind_with_previews_and_placeholders(provider):
    assert "lora" in ui.kinds()
    items = ui.gallery_items(ui.cards_of("lora"))
    assert items[0] == (str(provider / "style.preview.png"), "style")
    assert items[1][1] == "other" and isinstance(items[1][0], Image.Image)
    gallery, tags, note = ui.showing("lora")
    assert tags == ["<lora:style:1>", "<lora:other:1>"] and note == ""
    assert ui.showing("nothing-here")[1] == [] and "No cards" in ui.showing("nothing-here")[2]


@pytest.mark.parametrize("prompt, tag, expected", [
    ("", "<lora:a:1>", "<lora:a:1>"),
    ("a cat", "<lora:a:1>", "a cat <lora:a:1>"),
    ("a cat <lora:a:1>", "<lora:a:1>", "a cat"),
    ("a cat, <lora:a:1>", "<lora:a:1>", "a cat"),
    ("<lora:a:1> a cat", "<lora:a:1>", "a cat"),
    ("a <lora:a:1> cat", "<lora:a:1>", "a cat"),
])
def test_toggle_tag(prompt, tag, expected):
    assert ui.toggle_tag(prompt, tag) == expected
