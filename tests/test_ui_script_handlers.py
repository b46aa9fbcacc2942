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
        strength = gr.Slider(label="Strength", minimum=0, maximum=1, value=0.25)
        word = gr.Textbox(label="Word", value="hi")
        self.infotext_fields = [(strength, "Picker strength"), (word, "Picker word")]  # A1111's paste fields
        return [strength, word]


class Always(Script):
    def title(self):
        return "Always on"

    def show(self, is_img2img):
        return AlwaysVisible

    def ui(self, is_img2img):
        enabled = gr.Checkbox(label="Enabled", value=False)
        self.infotext_fields = [(enabled, lambda params: "Always on" in params)]
        return [enabled]


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


GRID_INFOTEXT = ("a lighthouse\nNegative prompt: blurry\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 3, "
                 'Size: 64x64, Script: X/Y/Z plot, X Type: Steps, X Values: "1, 2, 3", Y Type: Seed, '
                 'Y Values: "-1, -1", Fixed Y Values: "5, 6"')


def pasted(ui, text):
    from modules.infotext import parse_infotext

    return ui.paste(parse_infotext(text))


def test_pasting_a_grids_infotext_selects_xyz_and_fills_its_axes():
    ui, _ = build()
    updates = pasted(ui, GRID_INFOTEXT)
    assert updates[ui.dropdown] == "X/Y/Z plot"
    assert {t: updates[c.column]["visible"] for t, c in ui.selectable.items()} == {
        "Prompts from file or textbox": False, "X/Y/Z plot": True, "Picker": False, "Broken": False}
    data = values(ui, "None")
    data.update({c: v for c, v in updates.items() if c in data and not isinstance(v, dict)})
    fields = ui.request_fields(data)  # what Generate would now send
    assert fields["script_name"] == "X/Y/Z plot"
    assert fields["script_args"][:9] == ["Steps", "1, 2, 3", None, "Seed", "-1, -1", None, "Nothing", "", None]
    picker = ui.selectable["Picker"].components
    assert all(updates[c] == gr.update() for c in picker)  # another script's controls are left alone


def test_pasting_an_extension_scripts_title_and_keys_case_insensitively():
    ui, _ = build()
    updates = pasted(ui, "a boat\nSteps: 5, Seed: 1, Script: picker, Picker strength: 0.5, Picker word: sail, "
                         "Always on: True")
    strength, word = ui.selectable["Picker"].components
    assert updates[ui.dropdown] == "Picker" and updates[ui.selectable["Picker"].column]["visible"]
    assert (updates[strength], updates[word]) == (0.5, "sail")
    [(_, [enabled])] = ui.alwayson
    assert updates[enabled] is True
    kind = ui.selectable["X/Y/Z plot"].components[0]
    assert updates[kind] == gr.update()


def test_pasting_without_a_script_or_with_an_unknown_one_selects_none():
    ui, _ = build()
    for text in ("a boat\nSteps: 5, Seed: 1", "a boat\nSteps: 5, Seed: 1, Script: Not installed"):
        updates = pasted(ui, text)
        assert updates[ui.dropdown] == "None"
        assert not any(updates[c.column]["visible"] for c in ui.selectable.values())
        [(_, [enabled])] = ui.alwayson
        assert updates[enabled] is False
    assert set(ui.paste(set())) == set(pasted(ui, GRID_INFOTEXT))  # the probe finds every control


def test_send_to_txt2img_reselects_the_script_in_the_real_tab(tiny_dir, policy, tmp_path):
    import argparse

    from modules.ui import txt2img
    from modules.ui.common import UIConfig, UIContext
    from modules.ui.paste import SendTo
    from modules.ui.styles_store import StyleStore
    from tests.extension_helpers import close, make_engine

    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        ctx = UIContext(engine, argparse.Namespace(listen=False), UIConfig(tmp_path / "ui-config.json"),
                        styles=StyleStore(tmp_path / "styles.csv"))
        with gr.Blocks() as ctx.blocks:
            with gr.Tabs() as ctx.tabs:
                with gr.Tab("txt2img", id="txt2img"):
                    tab = txt2img.build(ctx)
            send = SendTo(ctx, "txt2img", tab, image=False, params=True)
        updates = send.updates(None, GRID_INFOTEXT)
        scripts = tab.params.scripts
        assert set(updates) <= set(send.outputs)
        assert updates[scripts.dropdown] == "X/Y/Z plot" and updates[tab.toprow.prompt] == "a lighthouse"
        x_type, x_values = scripts.selectable["X/Y/Z plot"].components[:2]
        assert (updates[x_type], updates[x_values]) == ("Steps", "1, 2, 3")
        assert send.updates(None, "a boat\nSteps: 5, Seed: 1")[scripts.dropdown] == "None"
    finally:
        close(engine)
