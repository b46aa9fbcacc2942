"""The generation parameters every generation tab shares, laid out and named as in A1111.

`Params.request_fields()` turns form values into GenerationRequest fields; `Params.paste()` is the way back,
from a request (read from infotext) to control values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gradio as gr

from modules import samplers
from modules.model_manager import VAE_AUTOMATIC, VAE_NONE
from modules.noise import MAX_SEED
from modules.request import MAX_BATCH_SIZE, MAX_N_ITER, MAX_STEPS, GenerationRequest
from modules.ui.common import UIContext, to_float, to_int, to_size, tool_button

# Infotext keys that become per-generation overrides, and the settings they override (A1111's names).
OVERRIDE_KEYS = {"Clip skip": "CLIP_stop_at_last_layers", "Model": "sd_model_checkpoint", "VAE": "sd_vae"}
QUICK_SETTINGS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")


@dataclass
class Params:
    tab: str
    sampler: Any = None
    scheduler: Any = None
    steps: Any = None
    width: Any = None
    height: Any = None
    batch_count: Any = None
    batch_size: Any = None
    cfg: Any = None
    seed: Any = None
    seed_reuse: Any = None
    extra: Any = None
    extra_row: Any = None
    subseed: Any = None
    subseed_reuse: Any = None
    subseed_strength: Any = None
    seed_resize_w: Any = None
    seed_resize_h: Any = None
    overrides: Any = None
    script: Any = None
    scripts: Any = None  # scripts_ui.ScriptsUI: the Script dropdown, its controls, the always-on scripts

    @property
    def inputs(self) -> set:
        names = ("sampler", "scheduler", "steps", "width", "height", "batch_count", "batch_size", "cfg", "seed",
                 "extra", "subseed", "subseed_strength", "seed_resize_w", "seed_resize_h", "overrides", "script")
        found = {getattr(self, n) for n in names if getattr(self, n) is not None}
        return found | (self.scripts.inputs if self.scripts is not None else set())

    def request_fields(self, ctx: UIContext, data: dict) -> dict[str, Any]:
        extra = bool(data[self.extra])
        fields: dict[str, Any] = {
            "sampler_name": data[self.sampler], "scheduler": data[self.scheduler],
            "steps": to_int(data[self.steps], 1, MAX_STEPS, 20),
            "cfg_scale": to_float(data[self.cfg], 0.0, 100.0, 7.0),
            "n_iter": to_int(data[self.batch_count], 1, MAX_N_ITER, 1),
            "batch_size": to_int(data[self.batch_size], 1, MAX_BATCH_SIZE, 1),
            "seed": to_int(data[self.seed], -1, MAX_SEED, -1),
            "subseed": to_int(data[self.subseed], -1, MAX_SEED, -1) if extra else -1,
            "subseed_strength": to_float(data[self.subseed_strength], 0.0, 1.0) if extra else 0.0,
            "seed_resize_from_w": to_int(data[self.seed_resize_w], 0, 8192) if extra else 0,
            "seed_resize_from_h": to_int(data[self.seed_resize_h], 0, 8192) if extra else 0,
            "override_settings": {**settings_overrides(ctx), **parse_overrides(data[self.overrides] or [])},
        }
        if self.width is not None:
            fields["width"], fields["height"] = to_size(data[self.width]), to_size(data[self.height])
        if self.scripts is not None:
            fields.update(self.scripts.request_fields(data))
        return fields

    def paste(self, ctx: UIContext, req: GenerationRequest, carried: set[str]) -> dict[Any, Any]:
        """Control values for a request read from infotext; `carried` are the infotext's own keys."""
        try:
            sampler = samplers.resolve_sampler(req.sampler_name, "Automatic")[0].name
        except Exception:
            sampler = None
        varied = req.subseed_strength > 0 or req.seed_resize_from_w > 0
        updates: dict[Any, Any] = {
            self.steps: req.steps, self.cfg: req.cfg_scale, self.seed: req.seed,
            self.scheduler: req.scheduler if req.scheduler in samplers.SCHEDULE_TYPES else "Automatic",
            self.extra: varied, self.extra_row: gr.update(visible=varied),
            self.subseed: req.subseed, self.subseed_strength: req.subseed_strength,
            self.seed_resize_w: req.seed_resize_from_w, self.seed_resize_h: req.seed_resize_from_h,
        }
        if sampler:
            updates[self.sampler] = sampler
        if self.width is not None and "Size-1" in carried:
            updates[self.width], updates[self.height] = req.width, req.height
        choices = override_choices(ctx, req.override_settings)
        updates[self.overrides] = gr.update(choices=choices, value=choices, visible=bool(choices))
        if self.scripts is not None:  # `Script: <title>` and the script's own keys
            updates.update(self.scripts.paste(carried))
        return updates

    def wire(self, gen_info: Any, selected: Any) -> None:
        """♻️ buttons reuse the seed of the image selected in the output gallery."""
        def reuse(info: Optional[dict], index: Optional[int], key: str):
            if not info or not info.get(key):
                return gr.update()
            i = max(0, (index or 0) - info.get("first", 0))
            values = info[key]
            return values[min(i, len(values) - 1)]

        self.seed_reuse.click(lambda info, i: reuse(info, i, "seeds"), [gen_info, selected], self.seed, queue=False)
        self.subseed_reuse.click(lambda info, i: reuse(info, i, "subseeds"), [gen_info, selected], self.subseed,
                                 queue=False)


def settings_overrides(ctx: UIContext) -> dict[str, Any]:
    """The quicksettings row as per-request overrides, so the job uses what the artist sees selected.
    A saved checkpoint or VAE that no longer exists is left out: the engine then falls back as A1111 does."""
    models = ctx.engine.models
    values = {name: ctx.settings.get(name) for name in QUICK_SETTINGS}
    checkpoint, vae = values["sd_model_checkpoint"], values["sd_vae"]
    if checkpoint and models.checkpoints.find(str(checkpoint)) is None:
        values["sd_model_checkpoint"] = None
    if vae not in (VAE_AUTOMATIC, VAE_NONE) and (not vae or models.vaes.find(str(vae)) is None):
        values["sd_vae"] = None
    return {k: v for k, v in values.items() if v is not None}


def parse_overrides(choices: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for choice in choices:
        key, _, value = str(choice).partition(": ")
        setting = OVERRIDE_KEYS.get(key)
        if setting is None or not value:
            continue
        result[setting] = int(value) if setting == "CLIP_stop_at_last_layers" else value
    return result


def override_choices(ctx: UIContext, overrides: dict[str, Any]) -> list[str]:
    """ "Clip skip: 2" etc. for each pasted setting that differs from the current one (A1111's Override settings)."""
    models = ctx.engine.models
    choices = []
    clip = overrides.get("CLIP_stop_at_last_layers", 1)
    if int(clip) != int(ctx.settings.get("CLIP_stop_at_last_layers") or 1):
        choices.append(f"Clip skip: {clip}")
    wanted = overrides.get("sd_model_checkpoint")
    if wanted:
        found = models.checkpoints.find(str(wanted))
        current = ctx.settings.get("sd_model_checkpoint")
        current_file = models.checkpoints.find(current) if current else models.current_file
        if found is not None and (current_file is None or found.path != current_file.path):
            choices.append(f"Model: {found.name}")
    vae = overrides.get("sd_vae")
    if vae and vae != ctx.settings.get("sd_vae") and models.vaes.find(str(vae)) is not None:
        choices.append(f"VAE: {vae}")
    return choices


def build_sampler(ctx: UIContext, tab: str, p: Params) -> None:
    names = [s.name for s in samplers.SAMPLERS]
    with gr.Row(elem_id=f"{tab}_sampler_row"):
        p.sampler = ctx.add(tab, "Sampling method", gr.Dropdown, choices=names, value=names[0],
                            elem_id=f"{tab}_sampling", min_width=160)
        p.scheduler = ctx.add(tab, "Schedule type", gr.Dropdown, choices=list(samplers.SCHEDULE_TYPES),
                              value="Automatic", elem_id=f"{tab}_scheduler", min_width=140)
        p.steps = ctx.add(tab, "Sampling steps", gr.Slider, minimum=1, maximum=150, step=1, value=20,
                          elem_id=f"{tab}_steps", scale=2, min_width=200)


def build_size(ctx: UIContext, tab: str, p: Params, width_label: str = "Width", height_label: str = "Height") -> None:
    with gr.Row(elem_classes=["size-row"]):
        with gr.Column(scale=8, min_width=200):
            p.width = ctx.add(tab, width_label, gr.Slider, minimum=64, maximum=2048, step=8, value=512,
                              elem_id=f"{tab}_width")
            p.height = ctx.add(tab, height_label, gr.Slider, minimum=64, maximum=2048, step=8, value=512,
                               elem_id=f"{tab}_height")
        swap = tool_button("swap", f"{tab}_res_switch_btn")
    swap.click(lambda w, h: (h, w), [p.width, p.height], [p.width, p.height], queue=False)


def build_batch(ctx: UIContext, tab: str, p: Params) -> None:
    with gr.Row():
        p.batch_count = ctx.add(tab, "Batch count", gr.Slider, minimum=1, maximum=100, step=1, value=1,
                                elem_id=f"{tab}_batch_count", min_width=160)
        p.batch_size = ctx.add(tab, "Batch size", gr.Slider, minimum=1, maximum=8, step=1, value=1,
                               elem_id=f"{tab}_batch_size", min_width=160)


def build_cfg(ctx: UIContext, tab: str, p: Params) -> None:
    p.cfg = ctx.add(tab, "CFG Scale", gr.Slider, minimum=1.0, maximum=30.0, step=0.5, value=7.0,
                    elem_id=f"{tab}_cfg_scale")


def build_seed(ctx: UIContext, tab: str, p: Params) -> None:
    with gr.Row(elem_id=f"{tab}_seed_row", elem_classes=["seed-row"]):
        p.seed = ctx.add(tab, "Seed", gr.Number, value=-1, precision=0, minimum=-1, maximum=MAX_SEED,
                         elem_id=f"{tab}_seed", scale=6, min_width=160)
        seed_random = tool_button("dice", f"{tab}_random_seed")
        p.seed_reuse = tool_button("reuse", f"{tab}_reuse_seed")
        p.extra = ctx.add(tab, "Extra", gr.Checkbox, value=False, elem_id=f"{tab}_subseed_show", scale=1,
                          min_width=80)
    with gr.Row(visible=False, elem_id=f"{tab}_subseed_row", elem_classes=["seed-row"]) as extra_row:
        p.subseed = ctx.add(tab, "Variation seed", gr.Number, value=-1, precision=0, minimum=-1, maximum=MAX_SEED,
                            elem_id=f"{tab}_subseed", scale=4, min_width=140)
        subseed_random = tool_button("dice", f"{tab}_random_subseed")
        p.subseed_reuse = tool_button("reuse", f"{tab}_reuse_subseed")
        p.subseed_strength = ctx.add(tab, "Variation strength", gr.Slider, minimum=0.0, maximum=1.0, step=0.01,
                                     value=0.0, elem_id=f"{tab}_subseed_strength", scale=4, min_width=160)
        p.seed_resize_w = ctx.add(tab, "Resize seed from width", gr.Slider, minimum=0, maximum=2048, step=8,
                                  value=0, elem_id=f"{tab}_seed_resize_from_w", scale=3, min_width=140)
        p.seed_resize_h = ctx.add(tab, "Resize seed from height", gr.Slider, minimum=0, maximum=2048, step=8,
                                  value=0, elem_id=f"{tab}_seed_resize_from_h", scale=3, min_width=140)
    p.extra_row = extra_row
    seed_random.click(lambda: -1, None, p.seed, queue=False)
    subseed_random.click(lambda: -1, None, p.subseed, queue=False)
    p.extra.change(lambda on: gr.update(visible=bool(on)), p.extra, extra_row, queue=False, show_progress="hidden")


def build_overrides_and_script(ctx: UIContext, tab: str, p: Params) -> None:
    p.overrides = gr.Dropdown(choices=[], value=[], multiselect=True, label="Override settings", visible=False,
                              elem_id=f"{tab}_override_settings", allow_custom_value=True)
    from modules.ui import scripts_ui

    p.scripts = scripts_ui.build(ctx, tab, is_img2img=tab != "txt2img")
    p.script = p.scripts.dropdown
