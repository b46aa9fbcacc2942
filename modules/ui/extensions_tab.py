"""The Extensions tab: installed extensions (enable/disable, check for updates, update, uninstall), the extensions an
index lists (the `extensions_index_url` setting, A1111's index.json format) to install one by name, and installing
from a git URL, a folder or a .zip (shown first, then confirmed). Every change goes through the engine's
ExtensionManager, which refuses (ExtensionAccessError) while listening without --enable-insecure-extension-access;
reading the index is refused then, too, since it makes the server fetch a URL typed into the page.

The handlers are plain functions of the manager and the form values (returning HTML and choices), so they are
tested without a browser; `build()` lays them out and wires them.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import gradio as gr

from modules.extensions import ExtensionError, ExtensionManager, IndexEntry, _name_from_source
from modules.ui.common import UIContext, error_html, esc, note_html, user_message

RESTART_NOTE = "Apply and restart needed: the change takes effect the next time Atelier starts."


def manager_for(ctx: UIContext) -> ExtensionManager:
    loaded = getattr(ctx.engine, "extensions", None)
    if loaded is not None:
        return loaded.manager
    return ExtensionManager(ctx.engine.paths, ctx.engine.settings, ctx.args)


def table_html(manager: ExtensionManager) -> str:
    rows = []
    for ext in manager.list():
        date = (datetime.datetime.fromtimestamp(ext.commit_date).strftime("%Y-%m-%d")
                if ext.commit_date else "")
        version = f"{ext.version} ({date})" if ext.version and date else ext.version or "—"
        status = ext.status if ext.is_git else "not from git"
        remote = f'<a href="{esc(ext.remote)}" target="_blank" rel="noopener">{esc(ext.remote)}</a>' \
            if ext.remote and ext.remote.startswith(("http://", "https://")) else esc(ext.remote or "")
        error = f'<div class="atelier-error">{esc(ext.load_error)}</div>' if ext.load_error else ""
        kind = "built-in" if ext.builtin else "user"
        rows.append(f'<tr data-extension="{esc(ext.name)}"><td>{"✔" if ext.enabled else "✘"}</td>'
                    f'<td><b>{esc(ext.name)}</b>{error}</td><td>{kind}</td><td>{remote}</td>'
                    f'<td>{esc(ext.branch or "")}</td><td>{esc(version)}</td>'
                    f'<td class="status-{esc(status.split(":")[0])}">{esc(status)}</td></tr>')
    if not rows:
        return note_html("No extensions are installed.")
    head = ("<tr><th>Enabled</th><th>Extension</th><th>Kind</th><th>URL</th><th>Branch</th><th>Version</th>"
            "<th>Update</th></tr>")
    return f'<table class="extensions-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def names(manager: ExtensionManager, user_only: bool = False) -> list[str]:
    return [e.name for e in manager.list() if not (user_only and e.builtin)]


def enabled_names(manager: ExtensionManager) -> list[str]:
    return [e.name for e in manager.list() if e.enabled]


def apply_enabled(manager: ExtensionManager, wanted: list[str]) -> str:
    """Enable the checked extensions and disable the others; returns the message to show."""
    wanted_set = set(wanted or [])
    changed = []
    try:
        for ext in manager.list():
            if ext.enabled != (ext.name in wanted_set):
                manager.set_enabled(ext.name, ext.name in wanted_set)
                changed.append(f"{'enabled' if ext.name in wanted_set else 'disabled'} {ext.name}")
    except ExtensionError as e:
        return error_html(str(e))
    if not changed:
        return note_html("Nothing changed.")
    return note_html(f"{'; '.join(changed).capitalize()}. {RESTART_NOTE}")


def check_updates(manager: ExtensionManager) -> str:
    try:
        checked = manager.check_for_updates()
    except ExtensionError as e:
        return error_html(str(e))
    behind = [e.name for e in checked if e.status == "behind"]
    if behind:
        return note_html(f"Updates available: {', '.join(behind)}.")
    return note_html("Checked: no updates available." if checked else "No extensions to check.")


def update(manager: ExtensionManager, name: Optional[str]) -> str:
    if not name:
        return error_html("Choose an extension to update.")
    try:
        ext = manager.update(name)
    except ExtensionError as e:
        return error_html(str(e))
    return note_html(f"Updated {ext.name} to {ext.version}. {RESTART_NOTE}")


def uninstall(manager: ExtensionManager, name: Optional[str]) -> str:
    if not name:
        return error_html("Choose an extension to uninstall.")
    try:
        manager.uninstall(name)
    except ExtensionError as e:
        return error_html(str(e))
    return note_html(f"Uninstalled {name}. {RESTART_NOTE}")


def describe_source(manager: ExtensionManager, source: str, name: str = "", branch: str = "") -> tuple[str, bool]:
    """What installing `source` would do, for the confirmation step: (HTML, whether it may go ahead)."""
    source = (source or "").strip()
    if not source:
        return error_html("Enter a git URL, a folder or a .zip file to install from."), False
    try:
        manager.check_access()
    except ExtensionError as e:
        return error_html(str(e)), False
    local = Path(source).expanduser()
    if local.is_file() and local.suffix.lower() == ".zip":
        kind = f"the zip file {local.resolve()}"
    elif local.is_dir():
        kind = f"the folder {local.resolve()}" + (" (a git repository)" if (local / ".git").exists() else "")
    else:
        kind = f"the git repository {source}" + (f", branch {branch}" if branch else "")
    local_source = local if (local.is_dir() and not (local / ".git").exists()) or local.suffix == ".zip" else None
    target = manager.user_dir / ((name or "").strip() or _name_from_source(source, local_source))
    text = (f"This will install from {kind} into {target}. Its requirements.txt and install.py, if any, run with "
            "this Python. Only install extensions you trust: they run with your permissions.")
    return note_html(text), True


def install(manager: ExtensionManager, source: str, name: str = "", branch: str = "") -> str:
    try:
        ext = manager.install((source or "").strip(), (name or "").strip() or None, (branch or "").strip() or None)
    except ExtensionError as e:
        return error_html(str(e))
    except Exception as e:  # git/pip failures carry their own message
        return error_html(user_message(e))
    return note_html(f"Installed {ext.name} into {ext.path}. {RESTART_NOTE}")


def index_url(manager: ExtensionManager) -> str:
    """The index URL setting (Settings → Extensions), shown as the default of the Available tab's URL box."""
    return str(manager.settings.get("extensions_index_url") or "")


def index_html(entries: list[IndexEntry]) -> str:
    rows = []
    for entry in entries:
        name = (f'<a href="{esc(entry.url)}" target="_blank" rel="noopener">{esc(entry.name)}</a>'
                if entry.url.startswith(("http://", "https://")) else esc(entry.name))
        tags = " ".join(f'<span class="extension-tag">{esc(tag)}</span>' for tag in entry.tags)
        state = "installed" if entry.installed else "not installed"
        rows.append(f'<tr data-index-entry="{esc(entry.name)}"><td><b>{name}</b><div class="meta">{esc(entry.url)}'
                    f'</div></td><td>{esc(entry.description)}</td><td>{tags}</td>'
                    f'<td class="status-{state.replace(" ", "-")}">{state}</td></tr>')
    if not rows:
        return note_html("The index lists no extensions.")
    head = "<tr><th>Extension</th><th>Description</th><th>Tags</th><th>Installed</th></tr>"
    return f'<table class="extensions-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def load_index(manager: ExtensionManager, url: str = "") -> tuple[str, list[str]]:
    """The index at `url` (default: the setting) as a table, and the names of its entries not installed yet."""
    try:
        manager.check_access()
        entries = manager.available((url or "").strip() or None)
    except ExtensionError as e:
        return error_html(str(e)), []
    return index_html(entries), [entry.name for entry in entries if not entry.installed]


def install_from_index(manager: ExtensionManager, url: str, name: Optional[str]) -> str:
    if not name:
        return error_html("Load the index, then choose an extension to install.")
    try:
        manager.check_access()  # before the index is even read
        ext = manager.install_from_index(name, (url or "").strip() or None)
    except ExtensionError as e:
        return error_html(str(e))
    except Exception as e:  # git/pip failures carry their own message
        return error_html(user_message(e))
    return note_html(f"Installed {ext.name} into {ext.path}. {RESTART_NOTE}")


def build(ctx: UIContext) -> None:
    manager = manager_for(ctx)
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", id="extensions_installed"):
            with gr.Row():
                apply = gr.Button("Apply and restart needed", variant="primary", elem_id="extensions_apply", scale=0,
                                  min_width=220)
                check = gr.Button("Check for updates", elem_id="extensions_check", scale=0, min_width=180)
            message = gr.HTML("", elem_id="extensions_message")
            enabled = gr.CheckboxGroup(label="Enabled extensions", choices=names(manager),
                                       value=enabled_names(manager), elem_id="extensions_enabled")
            table = gr.HTML(table_html(manager), elem_id="extensions_table")
            with gr.Row(equal_height=False):
                chosen = gr.Dropdown(label="Extension", choices=names(manager), value=None,
                                     elem_id="extensions_chosen", scale=2)
                update_button = gr.Button("Update", elem_id="extensions_update", scale=0)
                remove = gr.Button("Uninstall…", variant="stop", elem_id="extensions_uninstall", scale=0)
            with gr.Row(visible=False, elem_id="extensions_uninstall_confirm_row") as confirm_remove_row:
                confirm_remove_text = gr.HTML("")
                confirm_remove = gr.Button("Yes, uninstall", variant="stop", elem_id="extensions_uninstall_confirm",
                                           scale=0)
                cancel_remove = gr.Button("Cancel", scale=0)
        available = _build_available(manager)
        with gr.Tab("Install from URL", id="extensions_install"):
            source = gr.Textbox(label="URL for extension's git repository, a folder or a .zip file",
                                elem_id="extensions_install_url")
            with gr.Row():
                branch = gr.Textbox(label="Specific branch name", placeholder="leave empty for the default",
                                    elem_id="extensions_install_branch")
                folder_name = gr.Textbox(label="Local directory name", placeholder="leave empty for the default",
                                         elem_id="extensions_install_dirname")
            review = gr.Button("Install…", variant="primary", elem_id="extensions_install_button")
            install_message = gr.HTML("", elem_id="extensions_install_message")
            with gr.Row(visible=False, elem_id="extensions_install_confirm_row") as confirm_install_row:
                confirm_install = gr.Button("Yes, install it", variant="primary",
                                            elem_id="extensions_install_confirm", scale=0)
                cancel_install = gr.Button("Cancel", scale=0)

    def refreshed(text: str) -> dict:
        all_names = names(manager)
        return {message: text, table: table_html(manager),
                enabled: gr.update(choices=all_names, value=enabled_names(manager)),
                chosen: gr.update(choices=all_names)}

    listing = [message, table, enabled, chosen]
    apply.click(lambda wanted: refreshed(apply_enabled(manager, wanted)), enabled, listing)
    check.click(lambda: refreshed(check_updates(manager)), None, listing)
    update_button.click(lambda name: refreshed(update(manager, name)), chosen, listing)

    def ask_remove(name: Optional[str]) -> dict:
        if not name:
            return {message: error_html("Choose an extension to uninstall."), confirm_remove_row: gr.update()}
        return {message: "", confirm_remove_text: note_html(f"Uninstall {name}? Its folder is deleted."),
                confirm_remove_row: gr.update(visible=True)}

    remove.click(ask_remove, chosen, [message, confirm_remove_text, confirm_remove_row], queue=False)
    confirm_remove.click(lambda name: {**refreshed(uninstall(manager, name)), confirm_remove_row: gr.update(
        visible=False)}, chosen, [*listing, confirm_remove_row])
    cancel_remove.click(lambda: gr.update(visible=False), None, confirm_remove_row, queue=False)

    def ask_install(src: str, dirname: str, br: str) -> tuple:
        text, ok = describe_source(manager, src, dirname, br)
        return text, gr.update(visible=ok)

    review.click(ask_install, [source, folder_name, branch], [install_message, confirm_install_row], queue=False)

    def do_install(src: str, dirname: str, br: str) -> dict:
        text = install(manager, src, dirname, br)
        return {**refreshed(""), install_message: text, confirm_install_row: gr.update(visible=False)}

    confirm_install.click(do_install, [source, folder_name, branch], [*listing, install_message,
                                                                       confirm_install_row])
    cancel_install.click(lambda: ("", gr.update(visible=False)), None, [install_message, confirm_install_row],
                         queue=False)
    _wire_index(ctx, manager, refreshed, listing, *available)


def _build_available(manager: ExtensionManager) -> tuple:
    """The Available tab: the index URL (the setting by default), its entries, and the one to install."""
    with gr.Tab("Available", id="extensions_available"):
        with gr.Row(equal_height=False):
            load = gr.Button("Load from:", variant="primary", elem_id="extensions_index_load", scale=0,
                             min_width=140)
            url = gr.Textbox(value=index_url(manager), show_label=False, elem_id="extensions_index_url", scale=4,
                             placeholder="URL of an extension index, http(s):// or file:// (Settings → Extensions)")
        index_table = gr.HTML(note_html("Load the index to see what it offers. Only install extensions you "
                                        "trust: they run with your permissions."), elem_id="extensions_index")
        with gr.Row(equal_height=False):
            entry = gr.Dropdown(label="Extension to install", choices=[], value=None, scale=3,
                                elem_id="extensions_index_choice")
            install_entry = gr.Button("Install", variant="primary", elem_id="extensions_index_install", scale=0)
        index_message = gr.HTML("", elem_id="extensions_index_message")
    return url, load, index_table, entry, install_entry, index_message


def _wire_index(ctx: UIContext, manager: ExtensionManager, refreshed, listing: list, url, load, index_table, entry,
                install_entry, index_message) -> None:
    """The Available tab: load the index into the table and the choice; install the chosen entry."""
    def loaded(address: str) -> dict:
        html, choices = load_index(manager, address)
        return {index_table: html, entry: gr.update(choices=choices, value=choices[0] if choices else None),
                index_message: ""}

    load.click(loaded, url, [index_table, entry, index_message])

    def do_install(address: str, name: Optional[str]) -> dict:
        text = install_from_index(manager, address, name)
        return {**refreshed(""), **loaded(address), index_message: text}

    install_entry.click(do_install, [url, entry], [*listing, index_table, entry, index_message])
    if hasattr(ctx, "on_load"):  # the setting may change after the UI is built
        ctx.on_load(lambda: {url: index_url(manager)})


def render_extension_tabs(tabs: list) -> None:
    """Extensions' own tabs (on_ui_tabs), each inside a gr.Tab; one that fails to render shows its error."""
    from modules.extension_callbacks import record_failure

    for item in tabs:
        with gr.Tab(item.title, elem_id=f"tab_{item.elem_id}"):
            try:
                item.component.render()
            except Exception as e:
                record_failure(item.extension, f"rendering tab '{item.title}'", e)
                gr.HTML(error_html(f"The tab of '{item.extension}' failed to render: {type(e).__name__}: {e}"))
