"""The Settings tab: every option by section with a search box, saved to config.json and applied at once;
and the Defaults page, which saves the UI's default values and slider limits to ui-config.json."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import gradio as gr

from modules.errors import ValidationError
from modules.settings import OPTIONS, Option
from modules.ui.common import UIContext, error_html, esc, note_html, user_message
from modules.ui.params import QUICK_SETTINGS

TAB = "settings"


def setting_component(name: str, option: Option, value: Any):
    common = dict(label=option.label, elem_id=f"setting_{name}", elem_classes=["setting-item"])
    default = option.default
    if isinstance(default, bool):
        return gr.Checkbox(value=bool(value), **common)
    if option.choices is not None:
        return gr.Dropdown(choices=list(option.choices), value=value, **common)
    if isinstance(default, int) and option.minimum is not None and option.maximum is not None:
        return gr.Slider(minimum=option.minimum, maximum=option.maximum, step=1, value=value, **common)
    if isinstance(default, (int, float)):
        return gr.Number(value=value, precision=0 if isinstance(default, int) else None, minimum=option.minimum,
                         maximum=option.maximum, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


def coerce(option: Option, value: Any) -> Any:
    """Form values into the option's type (sliders send floats; textboxes send "" for nothing)."""
    if isinstance(option.default, bool):
        return bool(value)
    if isinstance(option.default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def apply_side_effects(ctx: UIContext, changed: dict[str, Any]) -> None:
    """Settings that live somewhere other than config.json take effect here, without a restart."""
    if "show_progress_every_n_steps" in changed:
        ctx.engine.queue.preview_every = int(changed["show_progress_every_n_steps"])


def build(ctx: UIContext) -> None:
    sections: dict[str, list[str]] = defaultdict(list)
    for name, option in OPTIONS.items():
        if name not in QUICK_SETTINGS:  # those live in the quicksettings row at the top
            sections[option.section].append(name)
    components: dict[str, Any] = {}
    with gr.Tabs(elem_id="settings_tabs"):
        with gr.Tab("Settings", id="settings_main", elem_id="settings_main_tab"):
            with gr.Row(elem_id="settings_top"):
                apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=1)
                gr.Textbox(placeholder="Search settings…", show_label=False, elem_id="settings_search", scale=3,
                           container=False)  # filtered in the browser (assets/script.js)
            status = gr.HTML("", elem_id="settings_result")
            with gr.Column(elem_id="settings"):
                for section, names in sections.items():
                    with gr.Group(elem_classes=["settings-section"]):
                        gr.HTML(f'<h3 class="settings-section-title">{esc(section)}</h3>')
                        for name in names:
                            components[name] = setting_component(name, OPTIONS[name], ctx.settings.get(name))
        with gr.Tab("Defaults", id="settings_defaults", elem_id="settings_defaults_tab"):
            gr.Markdown("Defaults for the controls of every tab, and the limits of their sliders, live in "
                        "`ui-config.json` (A1111's keys: `txt2img/Sampling steps/value`, `…/maximum`). "
                        "Saved values apply the next time a page loads.")
            with gr.Row():
                save_current = gr.Button("Save the current values as defaults", variant="primary",
                                         elem_id="defaults_save_current")
                save_json = gr.Button("Save the file below", elem_id="defaults_save_json")
            defaults_status = gr.HTML("", elem_id="defaults_result")
            editor = gr.Code(value=json.dumps(ctx.ui_config.values, indent=2), language="json", interactive=True,
                             label="ui-config.json", elem_id="defaults_json", max_lines=30)

    def apply_settings(data: dict):
        changed = {}
        for name, component in components.items():
            value = coerce(OPTIONS[name], data[component])
            if value != ctx.settings.get(name):
                changed[name] = value
        if not changed:
            return note_html("Nothing changed.")
        try:
            ctx.settings.update(changed)
        except ValidationError as e:
            return error_html(user_message(e))
        apply_side_effects(ctx, changed)
        labels = ", ".join(OPTIONS[n].label for n in changed)
        return note_html(f"{len(changed)} setting(s) saved to config.json and applied: {labels}.")

    apply.click(apply_settings, set(components.values()), status)
    ctx.on_load(lambda: {c: ctx.settings.get(n) for n, c in components.items()})

    controls = ctx.ui_config.controls

    def save_defaults(data: dict):
        changed = ctx.ui_config.save_values(data)
        return note_html(f"Saved {changed} changed default(s) to ui-config.json."), \
            json.dumps(ctx.ui_config.values, indent=2)

    def save_file(text: str):
        try:
            data = json.loads(text or "{}")
            if not isinstance(data, dict):
                raise ValueError("the file must hold one JSON object")
        except ValueError as e:
            return error_html(f"Not saved: {e}")
        ctx.ui_config.replace(data)
        return note_html("Saved ui-config.json; reload the page to see the new defaults.")

    save_current.click(save_defaults, {c.component for c in controls.values() if "value" in c.defaults},
                       [defaults_status, editor])
    save_json.click(save_file, editor, defaults_status)
    ctx.on_load(lambda: {editor: json.dumps(ctx.ui_config.values, indent=2)})
