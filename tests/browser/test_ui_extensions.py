"""The Extensions and Checkpoint Merger tabs in the browser."""
from __future__ import annotations

import pytest

from tests.browser.conftest import go_to_tab, shot

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright").expect


def test_extensions_tab_lists_extensions_and_asks_before_installing(page, ui_server, tmp_path):
    go_to_tab(page, "extensions")
    table = page.locator("#extensions_table table")
    expect(table).to_be_visible()
    expect(table.locator("tr[data-extension='lora']")).to_be_visible()
    expect(page.locator("#extensions_enabled")).to_contain_text("lora")
    shot(page, "extensions")

    source = tmp_path / "sd-hello"
    (source / "scripts").mkdir(parents=True)
    page.get_by_role("tab", name="Install from URL").click()
    page.locator("#extensions_install_url textarea, #extensions_install_url input").first.fill(str(source))
    page.click("#extensions_install_button")
    expect(page.locator("#extensions_install_message")).to_contain_text("the folder")
    expect(page.locator("#extensions_install_confirm")).to_be_visible()
    shot(page, "extensions-install")
    page.get_by_role("button", name="Cancel").last.click()
    expect(page.locator("#extensions_install_confirm")).to_be_hidden()
    assert not (ui_server.data_dir / "extensions" / "sd-hello").exists()


def test_merger_tab_shows_the_checkpoints(page):
    go_to_tab(page, "modelmerger")
    page.locator("#modelmerger_primary_model_name input").first.click()
    expect(page.get_by_role("option", name="tiny-sd1.safetensors")).to_be_visible()
    page.keyboard.press("Escape")
    page.click("#modelmerger_merge")
    expect(page.locator("#modelmerger_result .atelier-error")).to_contain_text("primary")
    shot(page, "merger")


def test_extra_network_card_click_puts_its_tag_in_the_prompt(page, tmp_path):
    from modules import extra_network_cards as cards

    saved = dict(cards._providers)
    (tmp_path / "inkwash.safetensors").write_bytes(b"x")
    cards.register_extra_network_cards("lora", lambda: [cards.card_for_file("lora", tmp_path / "inkwash.safetensors")])
    try:
        page.locator("#txt2img_prompt textarea").fill("a harbour")
        page.click("#txt2img_extra_networks")
        page.click("#txt2img_extra_networks_refresh")
        card = page.locator("#txt2img_extra_networks_cards img").first
        expect(card).to_be_visible()
        card.click()
        expect(page.locator("#txt2img_prompt textarea")).to_have_value("a harbour <lora:inkwash:1>")
        shot(page, "extra-networks")
        card.click()
        expect(page.locator("#txt2img_prompt textarea")).to_have_value("a harbour")
    finally:
        cards._providers.clear()
        cards._providers.update(saved)
