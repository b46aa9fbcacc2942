"""The Extensions tab: installed extensions (enable/disable, check for updates, update, uninstall) and installing
one from a git URL, a folder or a .zip (shown first, then confirmed). Every change goes through the engine's
ExtensionManager, which refuses (ExtensionAccessError) while listening without --enable-insecure-extension-access.

The handlers are plain functions of the manager and the form values (returning HTML and choices), so they are
tested without a browser; `build()` lays them out and wires them.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import gradio as gr

from modules.extensions import ExtensionError, ExtensionManager, _name_from_source
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
