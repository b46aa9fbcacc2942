"""The Script dropdown and the always-on scripts' container of a generation tab.

The dropdown lists "None", the built-in scripts for the tab (modules/builtin_scripts.py), then the extensions'
selectable scripts (engine.scripts.runner(is_img2img).titles). Each choice owns a hidden column of controls,
shown when it is selected. On Generate, `request_fields()` turns the form into the request's script fields as
the API takes them:

    built-in:   script_name = its title, script_args = A1111's order (BUILTIN_SCRIPTS[i].args)
    extension:  script_name = its title, script_args = the values of the components its ui() returned
    always-on:  alwayson_scripts = {title: {"args": [values of its ui() components]}}

A built-in script queues its own jobs and waits for them, so `run_builtin()` runs it beside the Gradio handler
(never on the job worker) and follows the jobs it submits.

Pasting an infotext (`ScriptsUI.paste`) is the way back, as in A1111: `Script: <title>` selects that script and
shows its controls (no `Script` key selects None), and the script's own keys fill its controls: X/Y/Z plot's
`X Type`, `X Values`, ...; an extension script's `infotext_fields` ([(component, key or fn(params))]).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import gradio as gr

from modules import builtin_scripts, upscaling
from modules.extension_callbacks import record_failure
from modules.request import GenerationRequest
from modules.ui.common import UIContext, error_html, esc, note_html, user_message

log = logging.getLogger(__name__)

NONE = "None"


@dataclass
class ScriptControls:
    title: str
    column: Any
    components: list = field(default_factory=list)
    args: Optional[Callable[[dict], list]] = None  # form values -> script_args (built-ins)
    builtin: bool = False
    pasteable: list = field(default_factory=list)  # the controls a pasted infotext may set
    paste: Optional[Callable[[Mapping[str, Any]], dict]] = None  # infotext params -> {control: value}


@dataclass
class ScriptsUI:
    tab: str
    is_img2img: bool
    dropdown: Any = None
    selectable: dict[str, ScriptControls] = field(default_factory=dict)
    alwayson: list[tuple[Any, list]] = field(default_factory=list)  # (Script, its components)
    alwayson_fields: list[tuple[Any, Any]] = field(default_factory=list)  # their infotext_fields, as built

    @property
    def inputs(self) -> set:
        found = {self.dropdown}
        for controls in self.selectable.values():
            found |= set(controls.components)
        for _, components in self.alwayson:
            found |= set(components)
        return found

    def request_fields(self, data: dict) -> dict[str, Any]:
        fields: dict[str, Any] = {"script_name": None, "script_args": []}
        chosen = self.selectable.get(data.get(self.dropdown) or NONE)
        if chosen is not None:
            fields["script_name"] = chosen.title
            fields["script_args"] = (chosen.args(data) if chosen.args is not None
                                     else [data[c] for c in chosen.components])
        if self.alwayson:
            fields["alwayson_scripts"] = {script.title(): {"args": [data[c] for c in components]}
                                          for script, components in self.alwayson}
        return fields

    def paste(self, params: Any) -> dict[Any, Any]:
        """Control updates for a pasted infotext's parameters (parse_infotext's dict). Every control a paste may
        touch is in the result, unchanged ones as gr.update(), so the paste's outputs can be found by pasting
        an empty infotext (modules/ui/paste.py)."""
        params = params if isinstance(params, Mapping) else {}
        title = self.title_for(params.get("Script"))
        updates: dict[Any, Any] = {self.dropdown: title}
        for name, controls in self.selectable.items():
            updates[controls.column] = gr.update(visible=name == title)
            updates.update({c: gr.update() for c in controls.pasteable})
            if name == title and controls.paste is not None:
                updates.update(controls.paste(params))
        updates.update({c: gr.update() for c, _ in self.alwayson_fields})
        updates.update(_paste_fields(self.alwayson_fields, params))
        return updates

    def title_for(self, wanted: Any) -> str:
        """The dropdown choice for an infotext's `Script:` value (A1111 matches titles; we ignore case)."""
        if not wanted:
            return NONE
        found = next((t for t in self.selectable if t.lower() == str(wanted).strip().lower()), None)
        if found is None:
            gr.Warning(f"Cannot find the script '{wanted}' of the pasted parameters: none selected.")
            return NONE
        return found


def _infotext_fields(script: Any, components: list) -> list[tuple[Any, Any]]:
    """A script's (component, infotext key or fn(params)) pairs, for components its ui() built in this UI."""
    built = set(components)
    fields = []
    for entry in getattr(script, "infotext_fields", None) or []:
        if isinstance(entry, (tuple, list)) and len(entry) == 2 and entry[0] in built:
            fields.append((entry[0], entry[1]))
    return fields


def _paste_fields(fields: list[tuple[Any, Any]], params: Mapping[str, Any]) -> dict[Any, Any]:
    """As A1111: a key the infotext lacks leaves its control alone; values take the type of the control's."""
    updates: dict[Any, Any] = {}
    for component, key in fields:
        try:
            value = key(params) if callable(key) else params.get(key)
        except Exception as e:  # an extension's paste function: a failure costs that field only
            log.warning("pasting infotext into %s failed: %s", getattr(component, "label", component), e)
            continue
        if value is not None:
            updates[component] = value if callable(key) else _typed(component, value)
    return updates


def _typed(component: Any, value: Any) -> Any:
    current = getattr(component, "value", None)
    try:
        if isinstance(current, bool):
            return str(value).strip().lower() in ("true", "1", "yes")
        if isinstance(current, (int, float)):
            number = float(value)
            return int(number) if isinstance(current, int) and number.is_integer() else number
    except (TypeError, ValueError):
        return gr.update()
    return value


def is_builtin(request: GenerationRequest) -> bool:
    if not request.script_name:
        return False
    kind = "img2img" if request.is_img2img else "txt2img"
    return request.script_name.strip().lower() in builtin_scripts.list_scripts()[kind]


def _components(value: Any) -> list:
    """The Gradio components a script's ui() returned (a list, a dict, or None)."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [c for c in value if isinstance(c, gr.components.Component)]


# --------------------------------------------------------------------------- built-in scripts' controls


def _xyz(tab: str, is_img2img: bool) -> ScriptControls:
    from scripts import xyz_grid

    labels = xyz_grid.axis_labels(is_img2img)
    defaults = (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing"))
    axes = []
    with gr.Column(visible=False, elem_id=f"{tab}_script_xyz_plot") as column:
        for letter, default in defaults:
            with gr.Row():
                kind = gr.Dropdown(label=f"{letter} type", choices=labels, value=default, allow_custom_value=True,
                                   elem_id=f"{tab}_xyz_{letter.lower()}_type", scale=1, min_width=150)
                values = gr.Textbox(label=f"{letter} values", lines=1, elem_id=f"{tab}_xyz_{letter.lower()}_values",
                                    scale=3, placeholder="e.g. 1, 2, 3 or 10-30 (+10); for any setting, type "
                                                         "'Setting: <name>' as the type")
            axes.append((kind, values))
        with gr.Row():
            legend = gr.Checkbox(label="Draw legend", value=True, elem_id=f"{tab}_xyz_draw_legend")
            lone = gr.Checkbox(label="Include Sub Images", value=False, elem_id=f"{tab}_xyz_include_lone_images")
            sub = gr.Checkbox(label="Include Sub Grids", value=False, elem_id=f"{tab}_xyz_include_sub_grids")
            keep = gr.Checkbox(label="Keep -1 for seeds", value=False, elem_id=f"{tab}_xyz_no_fixed_seeds")
        margin = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, step=2, value=0,
                           elem_id=f"{tab}_xyz_margin_size")

    def args(d: dict) -> list:
        result = []
        for kind, values in axes:
            result += [d[kind] or "Nothing", d[values] or "", None]
        return result + [bool(d[legend]), bool(d[lone]), bool(d[sub]), bool(d[keep]), int(d[margin] or 0), False]

    def paste(params: Mapping[str, Any]) -> dict:
        """A grid's infotext names only the axes it used: the others are "Nothing"."""
        updates = {}
        for letter, (kind, values) in zip("XYZ", axes):
            updates[kind] = params.get(f"{letter} Type") or "Nothing"
            updates[values] = params.get(f"{letter} Values") or ""
        return updates

    components = [c for pair in axes for c in pair] + [legend, lone, sub, keep, margin]
    return ScriptControls("X/Y/Z plot", column, components, args, builtin=True,
                          pasteable=[c for pair in axes for c in pair], paste=paste)


def _prompts(tab: str, is_img2img: bool) -> ScriptControls:
    with gr.Column(visible=False, elem_id=f"{tab}_script_prompts_from_file") as column:
        with gr.Row():
            iterate = gr.Checkbox(label="Iterate seed every line", value=False, elem_id=f"{tab}_pff_iterate")
            same = gr.Checkbox(label="Use same random seed for all lines", value=False,
                               elem_id=f"{tab}_pff_iterate_batch")
            position = gr.Radio(label="Insert prompts at the", choices=["start", "end"], value="start",
                                elem_id=f"{tab}_pff_prompt_position")
        text = gr.Textbox(label="List of prompt inputs", lines=4, elem_id=f"{tab}_pff_prompt_txt",
                          placeholder="one prompt per line; --steps 10 --seed 5 style options work too")

    def args(d: dict) -> list:
        return [bool(d[iterate]), bool(d[same]), d[position] or "start", d[text] or ""]

    return ScriptControls("Prompts from file or textbox", column, [iterate, same, position, text], args, builtin=True)


def _sd_upscale(tab: str, is_img2img: bool) -> ScriptControls:
    names = [u["name"] for u in upscaling.list_upscalers()]
    with gr.Column(visible=False, elem_id=f"{tab}_script_sd_upscale") as column:
        gr.Markdown("Upscales the image, then redraws it tile by tile at the width and height set above.")
        overlap = gr.Slider(label="Tile overlap", minimum=0, maximum=256, step=16, value=64,
                            elem_id=f"{tab}_sd_upscale_overlap")
        scale = gr.Slider(label="Scale Factor", minimum=1.0, maximum=4.0, step=0.05, value=2.0,
                          elem_id=f"{tab}_sd_upscale_scale")
        upscaler = gr.Dropdown(label="Upscaler", choices=names, value=names[0] if names else None,
                               elem_id=f"{tab}_sd_upscale_upscaler")

    def args(d: dict) -> list:
        return [None, int(d[overlap] or 0), d[upscaler] or "None", float(d[scale] or 2.0)]

    return ScriptControls("SD upscale", column, [overlap, scale, upscaler], args, builtin=True)


def _loopback(tab: str, is_img2img: bool) -> ScriptControls:
    from scripts import loopback

    with gr.Column(visible=False, elem_id=f"{tab}_script_loopback") as column:
        loops = gr.Slider(label="Loops", minimum=1, maximum=32, step=1, value=4, elem_id=f"{tab}_loopback_loops")
        final = gr.Slider(label="Final denoising strength", minimum=0.0, maximum=1.0, step=0.01, value=0.5,
                          elem_id=f"{tab}_loopback_final_denoising")
        curve = gr.Dropdown(label="Denoising strength curve", choices=list(loopback.CURVES), value="Linear",
                            elem_id=f"{tab}_loopback_curve")

    def args(d: dict) -> list:
        return [int(d[loops] or 4), float(d[final]), d[curve] or "Linear", "None"]

    return ScriptControls("Loopback", column, [loops, final, curve], args, builtin=True)


BUILDERS: dict[str, Callable[[str, bool], ScriptControls]] = {
    "X/Y/Z plot": _xyz, "Prompts from file or textbox": _prompts, "SD upscale": _sd_upscale, "Loopback": _loopback,
}


# --------------------------------------------------------------------------- building and wiring


def build(ctx: UIContext, tab: str, is_img2img: bool) -> ScriptsUI:
    """The Script dropdown, each script's hidden controls, and the always-on container (with extensions' UIs)."""
    ui = ScriptsUI(tab, is_img2img)
    runner = ctx.engine.scripts.runner(is_img2img)
    builtin = [s.title for s in builtin_scripts.BUILTIN_SCRIPTS if (s.img2img if is_img2img else s.txt2img)]
    extension_titles = [t for t in runner.titles if t.lower() not in {b.lower() for b in builtin}]
    ui.dropdown = gr.Dropdown(choices=[NONE, *builtin, *extension_titles], value=NONE, label="Script",
                              elem_id=f"{tab}_script")
    for title in builtin:
        ui.selectable[title] = BUILDERS[title](tab, is_img2img)
    for script in runner.selectable_scripts:
        title = script.title()
        if title not in extension_titles or title in ui.selectable:
            continue
        with gr.Column(visible=False, elem_id=f"{tab}_script_ext_{len(ui.selectable)}") as column:
            components = _script_ui(runner, script, is_img2img)
        fields = _infotext_fields(script, components)
        ui.selectable[title] = ScriptControls(title, column, components, pasteable=[c for c, _ in fields],
                                              paste=lambda params, fields=fields: _paste_fields(fields, params))
    with gr.Column(elem_id=f"{tab}_script_container", elem_classes=["script-container"]):
        for script in runner.alwayson_scripts:
            with gr.Group(elem_id=f"{tab}_alwayson_{len(ui.alwayson)}"):
                components = _script_ui(runner, script, is_img2img)
            ui.alwayson.append((script, components))
            ui.alwayson_fields += _infotext_fields(script, components)

    columns = [c.column for c in ui.selectable.values()]
    titles = list(ui.selectable)

    def show(choice: str):
        return [gr.update(visible=(t == choice)) for t in titles]

    if columns:
        ui.dropdown.change(show, ui.dropdown, columns, queue=False, show_progress="hidden")
    return ui


def _script_ui(runner: Any, script: Any, is_img2img: bool) -> list:
    """Build an extension script's ui() here; its components' values become its arguments."""
    try:
        components = _components(script.ui(is_img2img))
    except Exception as e:
        record_failure(script.extension, f"ui() of script '{script.title()}'", e)
        gr.Markdown(f"The script '{script.title()}' failed to build its controls: {type(e).__name__}: {e}")
        return []
    runner.use_ui_components(script, components)
    return components


def run_builtin(view: Any, request: GenerationRequest) -> Iterator[dict]:
    """Run a built-in script for a JobView: in its own thread beside the handler (the script submits jobs to the
    queue and waits for each, so it must never run on the job worker); follow the jobs it submits, so progress,
    previews, Interrupt and Skip work; then show its images and infotexts."""
    from modules.ui.outputs import show_images
    from modules.ui.progress import POLL_SECONDS, progress_html

    engine = view.ctx.engine
    before = {job.id for job in engine.queue.list()}
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = builtin_scripts.run_script(engine, request)
        except Exception as e:  # shown to the artist below
            outcome["error"] = e

    started = time.time()
    thread = threading.Thread(target=target, name=f"atelier-ui-script-{view.kind}", daemon=True)
    thread.start()
    title = request.script_name
    yield {**view.idle(), view.toprow.generate: gr.update(visible=False),
           view.toprow.interrupt: gr.update(visible=True), view.toprow.skip: gr.update(visible=True),
           view.panel.progress: note_html(f"{title}: starting…")}
    shown, preview_step, current = None, None, None
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        jobs = [job for job in engine.queue.list() if job.id not in before]
        if not jobs:
            continue
        job = jobs[-1]
        updates: dict = {}
        if job is not current:
            current = job
            updates[view.panel.job_id] = job.id
        html = progress_html(job, prefix=f"{title} · job {len(jobs)} · ")
        if html != shown:
            updates[view.panel.progress] = shown = html
        if job.preview is not None and job.preview_step != preview_step:
            preview_step = job.preview_step
            updates[view.panel.preview] = gr.update(value=job.preview, visible=True)
        if updates:
            yield updates
    if "error" in outcome:
        yield {**view.idle(), view.panel.progress: error_html(user_message(outcome["error"]))}
        return
    result: builtin_scripts.ScriptResult = outcome["result"]
    taken = time.time() - started
    notes = "".join(f'<p class="atelier-note">{esc(e)}</p>' for e in result.errors)
    meta = f'<p class="meta">Time taken: {taken:.1f} s</p>{notes}'
    seeds = [result.seed] * len(result.images) if result.seed is not None else []
    final = {**view.idle(), **show_images(view.panel, list(result.images), list(result.infotexts), meta=meta,
                                          seeds=seeds, subseeds=[])}
    final[view.panel.progress] = note_html("Interrupted: showing what was finished.") if result.interrupted else ""
    if not result.images and not result.interrupted:
        final[view.panel.progress] = error_html(f"{title} made no images"
                                                + (f": {'; '.join(result.errors)}" if result.errors else "."))
    yield final
