"""The ControlNet accordion: N unit tabs, each a set of controls whose values are gathered into one unit
object (a gr.State) — the same object API clients send, so the script reads one shape from both.

The handler functions (`unit_args`, `preview`, `slider_updates`, `model_choices`) are plain functions of
the controls' values, so tests call them without a browser.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from controlnet_apply import detect, map_to_image
from controlnet_models import ControlNetLibrary
from controlnet_preprocessors import PREPROCESSORS, RESOLUTION, find_preprocessor, missing_files
from controlnet_units import (CONTROL_MODES, HR_OPTIONS, RESIZE_MODES, ControlUnit, decode_image,
                              parse_infotext_entry, unit_from_args)

# The controls of one unit, in the order their values reach unit_args().
FIELDS = ("enabled", "image", "use_img2img_image", "module", "model", "weight", "guidance_start", "guidance_end",
          "control_mode", "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b",
          "hr_option")


def unit_args(*values: Any) -> dict[str, Any]:
    """Control values (in FIELDS order) → the unit object the script receives (the API's shape)."""
    unit = dict(zip(FIELDS, values))
    unit["image"] = decode_image(unit.get("image"))
    return unit


PASTED = [name for name in FIELDS if name not in ("image", "use_img2img_image")]  # what an infotext holds


def paste_unit(index: int) -> Callable[[dict], Optional[dict[str, Any]]]:
    """For infotext_fields: a pasted infotext's `ControlNet <index>` entry → that unit's state (None: no such
    entry, the unit stays as it is). The picture is never in an infotext: the unit keeps the one it has."""
    def read(params: dict) -> Optional[dict[str, Any]]:
        entry = params.get(f"ControlNet {index}")
        if not isinstance(entry, str):
            return None
        unit = unit_from_args(parse_infotext_entry(entry))
        return {"enabled": True, **{name: getattr(unit, name) for name in PASTED if name != "enabled"}}

    return read


def unit_to_controls(unit: Optional[dict[str, Any]]) -> list[Any]:
    """A unit state → values for its controls in FIELDS order (gr.update dicts): how a pasted unit shows up.
    The picture and "use the img2img image" are left alone."""
    keep = {"__type__": "update"}
    if not isinstance(unit, dict):
        return [keep for _ in FIELDS]
    return [{"value": unit[name], "__type__": "update"} if name in PASTED and name in unit else keep
            for name in FIELDS]


def model_choices(library: ControlNetLibrary) -> list[str]:
    return ["None", *[f.title for f in library.files()]]


def module_choices() -> list[str]:
    """Preprocessors; those that can't run here say what they need."""
    return [name for name, p in PREPROCESSORS.items() if not missing_files(p)]


def slider_updates(module: str) -> list[dict[str, Any]]:
    """Resolution, threshold A and B sliders for a preprocessor: shown only when it has them, with its names,
    ranges and defaults (as gr.update dicts)."""
    preprocessor = find_preprocessor(module)
    updates = [{"visible": preprocessor.resolution, "__type__": "update"}]
    for i in range(2):
        if i < len(preprocessor.sliders):
            s = preprocessor.sliders[i]
            updates.append({"visible": True, "label": s.name, "minimum": s.minimum, "maximum": s.maximum,
                            "value": s.value, "step": s.step, "__type__": "update"})
        else:
            updates.append({"visible": False, "value": -1, "minimum": -1, "__type__": "update"})
    return updates


def preview(image: Any, module: str, processor_res: float, threshold_a: float, threshold_b: float,
            pixel_perfect: bool, resize_mode: str, width: int = 512, height: int = 512) -> Optional[Any]:
    """The preprocessed map of a unit's image, as the unit would use it (None without an image)."""
    picture = decode_image(image)
    if picture is None:
        return None
    unit = ControlUnit(module=module, processor_res=int(processor_res), threshold_a=float(threshold_a),
                       threshold_b=float(threshold_b), pixel_perfect=bool(pixel_perfect), resize_mode=resize_mode)
    return map_to_image(detect(unit, picture, None, (int(height), int(width))))


def unavailable_note() -> str:
    lines = [f"- `{name}`: needs {', '.join(missing_files(p))}" for name, p in PREPROCESSORS.items()
             if missing_files(p)]
    return ("Preprocessors that can't run here (weights go in `models/ControlNet/annotators`):\n" + "\n".join(lines)
            if lines else "")


def _unit_controls(gr: Any, is_img2img: bool, library: ControlNetLibrary) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["image"] = gr.Image(label="Control image", type="pil", sources=["upload", "clipboard"], height=256)
        result = gr.Image(label="Preprocessor preview", type="pil", interactive=False, height=256)
    with gr.Row():
        c["enabled"] = gr.Checkbox(label="Enable", value=False)
        c["use_img2img_image"] = gr.Checkbox(label="Use the img2img image", value=False, visible=is_img2img)
        c["pixel_perfect"] = gr.Checkbox(label="Pixel Perfect", value=False)
    with gr.Row():
        c["module"] = gr.Dropdown(label="Preprocessor", choices=module_choices(), value="none")
        c["model"] = gr.Dropdown(label="Model", choices=model_choices(library), value="None")
        refresh = gr.Button("🔄", scale=0, min_width=40)
        run_preview = gr.Button("💥 Preview", scale=0)
    with gr.Row():
        c["weight"] = gr.Slider(label="Control Weight", minimum=0, maximum=2, step=0.05, value=1.0)
        c["guidance_start"] = gr.Slider(label="Starting Control Step", minimum=0, maximum=1, step=0.01, value=0)
        c["guidance_end"] = gr.Slider(label="Ending Control Step", minimum=0, maximum=1, step=0.01, value=1)
    with gr.Row():
        c["processor_res"] = gr.Slider(label=RESOLUTION.name, minimum=64, maximum=2048, step=1, value=512,
                                       visible=False)
        c["threshold_a"] = gr.Slider(label="Threshold A", minimum=-1, maximum=255, value=-1, visible=False)
        c["threshold_b"] = gr.Slider(label="Threshold B", minimum=-1, maximum=255, value=-1, visible=False)
    c["control_mode"] = gr.Radio(label="Control Mode", choices=list(CONTROL_MODES), value=CONTROL_MODES[0])
    c["resize_mode"] = gr.Radio(label="Resize Mode", choices=list(RESIZE_MODES), value=RESIZE_MODES[1])
    c["hr_option"] = gr.Radio(label="Hires fix", choices=list(HR_OPTIONS), value=HR_OPTIONS[0])
    sliders = [c["processor_res"], c["threshold_a"], c["threshold_b"]]
    c["module"].change(lambda m: [gr.update(**{k: v for k, v in u.items() if k != "__type__"})
                                  for u in slider_updates(m)], c["module"], sliders, queue=False)
    refresh.click(lambda: gr.update(choices=model_choices(library)), None, c["model"], queue=False)
    run_preview.click(preview, [c["image"], c["module"], *sliders, c["pixel_perfect"], c["resize_mode"]], result)
    return c


def build_units(is_img2img: bool, count: int, library: ControlNetLibrary) -> tuple[list[Any], list[tuple]]:
    """Build the accordion; returns (one gr.State per unit: the script's arguments, infotext_fields: each
    state with a function reading its unit from a pasted infotext)."""
    import gradio as gr

    states, infotext_fields = [], []
    with gr.Accordion("ControlNet", open=False):
        with gr.Tabs():
            for i in range(count):
                with gr.Tab(f"ControlNet Unit {i}"):
                    controls = _unit_controls(gr, is_img2img, library)
                    state = gr.State(None)
                    inputs = [controls[name] for name in FIELDS]
                    for component in inputs:
                        component.change(unit_args, inputs, state, queue=False, show_progress="hidden")
                    # A paste sets the state; the controls follow it, and their change events bring the state
                    # back in line with them (the picture included), after which nothing changes any more.
                    state.change(lambda unit: [gr.update(**{k: v for k, v in u.items() if k != "__type__"})
                                               for u in unit_to_controls(unit)], state, inputs, queue=False)
                    infotext_fields.append((state, paste_unit(i)))
                    states.append(state)
        note = unavailable_note()
        if note:
            gr.Markdown(note)
    return states, infotext_fields

