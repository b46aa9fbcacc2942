"""The Script dropdown's request fields, built-in and extension scripts (no browser: the handler functions)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from modules.request import GenerationRequest
from modules.scripting import AlwaysVisible, Script, ScriptClass, ScriptRegistry
from modules.ui import scripts_ui


class Picker(Script):
    def title(self):
        return "Picker"

    def ui(self, is_img2img):
        return [gr.Slider(label="Strength", minimum=0, maximum=1, value=0.25), gr.Textbox(label="Word", value="hi")]


class Always(Script):
    def title(self):
        return "Always on"

    def show(self, is_img2img):
        return AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(label="Enabled", value=False)]


class Broken(Script):
    def title(self):
        return "Broken"

    def ui(self, is_img2img):
        raise RuntimeError("no controls today")


@pytest.fixture(autouse=True)
def keep_app_failures():
    from modules import extension_callbacks
    saved = list(extension_callbacks.app_failures)
    yield
    extension_callbacks.app_failures[:] = saved


def build(tab="txt2img", is_img2img=False):
    registry = ScriptRegistry()
    registry.set_classes([ScriptClass(cls, Path(f"{cls.__name__}.py"), "ext") for cls in (Picker, Always, Broken)])
    ctx = SimpleNamespace(engine=SimpleNamespace(scripts=registry))
    with gr.Blocks():
        ui = scripts_ui.build(ctx, tab, is_img2img)
    return ui, registry


def values(ui, choice, **by_label):
    data = {ui.dropdown: choice}
    for controls in ui.selectable.values():
        for c in controls.components:
            data[c] = by_label.get(getattr(c, "label", None), c.value)
    for _, components in ui.alwayson:
        for c in components:
            data[c] = by_label.get(c.label, c.value)
    return data


def test_dropdown_lists_none_builtins_then_extension_scripts():
    ui, _ = build()
    assert [c[0] for c in ui.dropdown.choices] == ["None", "Prompts from file or textbox", "X/Y/Z plot", "Picker",
                                                   "Broken"]
    ui, _ = build("img2img", True)
    assert [c[0] for c in ui.dropdown.choices][:5] == ["None", "Prompts from file or textbox", "X/Y/Z plot",
                                                       "Loopback", "SD upscale"]


def test_none_sends_only_the_always_on_scripts_args():
    ui, _ = build()
    fields = scripts_ui.ScriptsUI.request_fields(ui, values(ui, "None", Enabled=True))
    assert fields == {"script_name": None, "script_args": [], "alwayson_scripts": {"Always on": {"args": [True]}}}


def test_extension_script_args_are_its_components_values_and_the_runner_accepts_them():
    ui, registry = build()
    fields = ui.request_fields(values(ui, "Picker", Strength=0.75, Word="boat"))
    assert fields["script_name"] == "Picker" and fields["script_args"] == [0.75, "boat"]
    request = GenerationRequest(prompt="x", **fields)
    args = registry.txt2img.script_args(request)
    picker = registry.txt2img.find("Picker", alwayson=False)
    always = registry.txt2img.find("Always on", alwayson=True)
    assert args[0] == 1 and args[picker.args_from:picker.args_to] == [0.75, "boat"]
    assert args[always.args_from:always.args_to] == [False]
    assert not scripts_ui.is_builtin(request)


def test_builtin_script_args_follow_a1111s_order():
    ui, _ = build()
    xyz = ui.selectable["X/Y/Z plot"]
    data = values(ui, "X/Y/Z plot", **{"X type": "Steps", "X values": "1,2"})
    fields = ui.request_fields(data)
    assert fields["script_name"] == "X/Y/Z plot"
    assert fields["script_args"] == ["Steps", "1,2", None, "Nothing", "", None, "Nothing", "", None,
                                     True, False, False, False, 0, False]
    assert len(fields["script_args"]) == 15 and xyz.builtin
    assert scripts_ui.is_builtin(GenerationRequest(prompt="x", **fields))

    ui, _ = build("img2img", True)
    fields = ui.request_fields(values(ui, "Loopback", Loops=3))
    assert fields["script_args"] == [3, 0.5, "Linear", "None"]
    fields = ui.request_fields(values(ui, "SD upscale"))
    assert fields["script_args"] == [None, 64, "None", 2.0]
    fields = ui.request_fields(values(ui, "Prompts from file or textbox", **{"List of prompt inputs": "a\nb"}))
    assert fields["script_args"] == [False, False, "start", "a\nb"]


def test_a_script_whose_ui_fails_is_listed_without_controls():
    ui, _ = build()
    assert ui.selectable["Broken"].components == []
    assert ui.request_fields(values(ui, "Broken"))["script_args"] == []


def test_loaded_extensions_always_on_ui_drives_the_job_and_their_tabs_render(tiny_dir, policy, tmp_path):
    import argparse

    from modules.ui.app import build_ui
    from tests.extension_helpers import A1111_EXTENSIONS, EXAMPLE_EXTENSION, close, load_from, make_engine
    from tests.extension_helpers import request as base_request

    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        load_from(engine, tmp_path, A1111_EXTENSIONS / "prompt-suffix", A1111_EXTENSIONS / "hello-tab",
                  EXAMPLE_EXTENSION)
        ctx = SimpleNamespace(engine=engine)
        with gr.Blocks():
            ui = scripts_ui.build(ctx, "txt2img", False)
        assert sorted(s.title() for s, _ in ui.alwayson) == ["Infotext note", "Prompt suffix"]
        data = values(ui, "None", Suffix=", in the rain", Note="from the UI")
        fields = ui.request_fields(data)
        assert fields["alwayson_scripts"] == {"Prompt suffix": {"args": [True, ", in the rain"]},
                                              "Infotext note": {"args": ["from the UI"]}}
        job = engine.generate(base_request(**fields), timeout=120)
        assert job.error is None, job.error
        text = job.result.infotexts[0]
        assert text.startswith("a lighthouse, in the rain") and "Note: from the UI" in text

        blocks = build_ui(engine, argparse.Namespace(listen=False))
        ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
        assert {"tab_hello_tab", "hello_tab_text", "txt2img_script_prompt_suffix_suffix"} <= ids
    finally:
        close(engine)
