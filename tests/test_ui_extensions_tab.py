"""The Extensions tab's handlers: listing, enable/disable, updates, uninstall, install with a confirmation step,
and the refusal while listening without --enable-insecure-extension-access."""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import gradio as gr
import pytest

from modules import extension_callbacks
from modules.extensions import ExtensionManager
from modules.paths import Paths
from modules.settings import Settings
from modules.ui import extensions_tab as T
from tests.test_extensions import git, make_source


@pytest.fixture()
def manager(tmp_path):
    paths = Paths.from_flags(data_dir=str(tmp_path / "data"))
    settings = Settings(file=tmp_path / "data" / "config.json")
    (tmp_path / "builtin" / "lora").mkdir(parents=True)
    return ExtensionManager(paths, settings, builtin_dir=tmp_path / "builtin")


def test_install_from_a_folder_after_confirming_then_disable_and_uninstall(manager, tmp_path):
    source = make_source(tmp_path / "sd-hello")
    (source / "install.py").unlink()
    text, ok = T.describe_source(manager, str(source))
    assert ok and "the folder" in text and str(manager.user_dir / "sd-hello") in text
    assert not (manager.user_dir / "sd-hello").exists()  # nothing happens before the confirmation

    assert "Installed sd-hello" in T.install(manager, str(source))
    assert "already installed" in T.install(manager, str(source))
    html = T.table_html(manager)
    assert 'data-extension="sd-hello"' in html and 'data-extension="lora"' in html and "built-in" in html
    assert T.names(manager) == ["lora", "sd-hello"] and T.enabled_names(manager) == ["lora", "sd-hello"]

    message = T.apply_enabled(manager, ["lora"])
    assert "Disabled sd-hello" in message and T.RESTART_NOTE in message
    assert manager.settings.get("disabled_extensions") == ["sd-hello"]
    assert "Nothing changed" in T.apply_enabled(manager, ["lora"])
    assert "✘" in T.table_html(manager)

    assert "not installed from git" in T.update(manager, "sd-hello")
    assert "Checked" in T.check_updates(manager)
    assert "built in" in T.uninstall(manager, "lora")
    assert "Uninstalled sd-hello" in T.uninstall(manager, "sd-hello")
    assert T.names(manager) == ["lora"] and manager.settings.get("disabled_extensions") == []


def test_git_extension_shows_its_version_and_updates(manager, tmp_path):
    origin = make_source(tmp_path / "sd-git")
    (origin / "install.py").unlink()
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "one")
    text, ok = T.describe_source(manager, str(origin), branch="")
    assert ok and "git repository" in text
    assert "Installed sd-git" in T.install(manager, str(origin))
    version = manager.get("sd-git").version
    assert version in T.table_html(manager)
    make_source(origin, version=2)
    (origin / "install.py").unlink()
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "two")
    assert "Updates available: sd-git" in T.check_updates(manager)
    assert "behind" in T.table_html(manager)
    assert "Updated sd-git" in T.update(manager, "sd-git")
    assert manager.get("sd-git").version != version


def test_listening_without_the_flag_refuses_with_the_managers_message(tmp_path):
    paths = Paths.from_flags(data_dir=str(tmp_path / "data"))
    args = argparse.Namespace(listen=True, enable_insecure_extension_access=False)
    manager = ExtensionManager(paths, Settings(file=tmp_path / "config.json"), args,
                               builtin_dir=tmp_path / "builtin")
    source = make_source(tmp_path / "sd-hello")
    text, ok = T.describe_source(manager, str(source))
    assert not ok and "--enable-insecure-extension-access" in text
    assert "--enable-insecure-extension-access" in T.install(manager, str(source))
    assert not manager.user_dir.exists() or not any(manager.user_dir.iterdir())
    assert "Enter a git URL" in T.describe_source(manager, "  ")[0]


def test_extension_tabs_render_inside_the_app(tmp_path):
    with gr.Blocks() as own:
        gr.Markdown("hello from an extension")
    broken = SimpleNamespace(render=lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    saved = list(extension_callbacks.app_failures)
    try:
        with gr.Blocks() as app:
            with gr.Tabs():
                T.render_extension_tabs([extension_callbacks.UiTab(own, "Mine", "mine", "ext-a"),
                                         extension_callbacks.UiTab(broken, "Bad", "bad", "ext-b")])
        ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
        assert {"tab_mine", "tab_bad"} <= ids
        assert extension_callbacks.app_failures[-1].extension == "ext-b"
    finally:
        extension_callbacks.app_failures[:] = saved


def indexed_repo(tmp_path):
    """A git repository and an index file (file:// URL) listing it, as A1111's index.json does."""
    import json

    origin = make_source(tmp_path / "sd-indexed")
    (origin / "install.py").unlink()
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "one")
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"extensions": [
        {"name": "Indexed <one>", "url": origin.as_uri(), "description": "Says hello & more",
         "tags": ["script", "tab"]},
        {"name": "Elsewhere", "url": "https://example.invalid/elsewhere.git", "description": "", "tags": []}]}))
    return origin, index.as_uri()


def test_available_tab_lists_the_index_from_the_setting_and_installs_an_entry(manager, tmp_path):
    assert "no extension index is set" in T.load_index(manager, "")[0]
    origin, url = indexed_repo(tmp_path)
    manager.settings.set("extensions_index_url", url, save=False)
    assert T.index_url(manager) == url

    html, choices = T.load_index(manager, "")
    assert choices == ["Indexed <one>", "Elsewhere"]
    assert "Indexed &lt;one&gt;" in html and "Says hello &amp; more" in html and ">script<" in html and ">tab<" in html
    assert html.count("not installed") == 2 and 'href="https://example.invalid/elsewhere.git"' in html

    assert "choose an extension" in T.install_from_index(manager, "", None)
    assert "no entry named &#x27;Nope&#x27;" in T.install_from_index(manager, "", "Nope")
    assert "Installed sd-indexed" in T.install_from_index(manager, url, "Indexed <one>")
    assert (manager.user_dir / "sd-indexed" / "scripts" / "hello.py").exists()
    assert "sd-indexed" in T.names(manager)
    html, choices = T.load_index(manager, url)
    assert choices == ["Elsewhere"] and html.count("not installed") == 1 and 'class="status-installed"' in html
    assert "can&#x27;t read the extension index" in T.load_index(manager, (tmp_path / "missing.json").as_uri())[0]


def test_available_tab_refuses_while_listening_without_the_flag(tmp_path):
    paths = Paths.from_flags(data_dir=str(tmp_path / "data"))
    origin, url = indexed_repo(tmp_path)
    settings = Settings(file=tmp_path / "config.json")
    settings.set("extensions_index_url", url, save=False)
    args = argparse.Namespace(listen=True, enable_insecure_extension_access=False)
    manager = ExtensionManager(paths, settings, args, builtin_dir=tmp_path / "builtin")
    html, choices = T.load_index(manager, "")
    assert "--enable-insecure-extension-access" in html and "atelier-error" in html and choices == []
    assert "--enable-insecure-extension-access" in T.install_from_index(manager, "", "Indexed <one>")
    assert not manager.user_dir.exists() or not any(manager.user_dir.iterdir())

    allowed = ExtensionManager(paths, settings, argparse.Namespace(listen=True, enable_insecure_extension_access=True),
                               builtin_dir=tmp_path / "builtin")
    assert T.load_index(allowed, "")[1] == ["Indexed <one>", "Elsewhere"]


def test_the_tab_builds_with_the_index_url_from_the_settings(manager, tmp_path):
    manager.settings.set("extensions_index_url", "file:///somewhere/index.json", save=False)
    loaders = []
    ctx = SimpleNamespace(engine=SimpleNamespace(extensions=SimpleNamespace(manager=manager)), on_load=loaders.append)
    with gr.Blocks() as blocks:
        T.build(ctx)
    found = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    assert found["extensions_index_url"].value == "file:///somewhere/index.json"
    assert {"extensions_index_load", "extensions_index", "extensions_index_choice",
            "extensions_index_install"} <= set(found)
    manager.settings.set("extensions_index_url", "file:///elsewhere.json", save=False)
    [loader] = loaders
    assert list(loader().values()) == ["file:///elsewhere.json"]
