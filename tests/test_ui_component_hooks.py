"""A1111's before_component / after_component (script methods and script_callbacks) while the real UI is built:
extensions written in A1111's style find the UI's components by elem_id, a failing hook is that extension's
failure and never stops the build, and Gradio's constructor is itself again afterwards."""
from __future__ import annotations

import argparse
import textwrap

import gradio as gr
import pytest
from gradio.components.base import Component

from modules import extension_callbacks
from modules.ui import component_hooks
from modules.ui.app import build_ui
from tests.extension_helpers import close, load_from, make_engine

GRABBER = '''
    import gradio as gr
    from modules import script_callbacks, scripts

    class Grabber(scripts.Script):
        events = []  # (who, elem_id, component), in call order, for every component
        grabbed = {}  # tabname -> the component built with elem_id "<tabname>_prompt"

        def title(self):
            return "Grabber"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def before_component(self, component, **kwargs):
            Grabber.events.append((f"{self.tabname} script before", kwargs.get("elem_id"), component))

        def after_component(self, component, **kwargs):
            Grabber.events.append((f"{self.tabname} script after", kwargs.get("elem_id"), component))
            if kwargs.get("elem_id") == f"{self.tabname}_prompt":
                Grabber.grabbed[self.tabname] = component

    def before(component, **kwargs):
        Grabber.events.append(("callback before", kwargs.get("elem_id"), component))

    def after(component, **kwargs):
        Grabber.events.append(("callback after", kwargs.get("elem_id"), component))

    script_callbacks.on_before_component(before)
    script_callbacks.on_after_component(after)
'''

BROKEN = '''
    from modules import script_callbacks, scripts

    class Broken(scripts.Script):
        def title(self):
            return "Broken hooks"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def after_component(self, component, **kwargs):
            raise ValueError("no component for me")

    def before(component, **kwargs):
        raise KeyError("elem_id")

    script_callbacks.on_before_component(before)
'''


def extension(root, name, source):
    folder = root / name
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


@pytest.fixture()
def built(tiny_dir, policy, tmp_path):
    """The real UI, built with the two extensions loaded; (engine, blocks, Grabber)."""
    engine = make_engine(tiny_dir, policy, tmp_path)
    sources = tmp_path / "sources"
    load_from(engine, tmp_path, extension(sources, "sd-grabber", GRABBER), extension(sources, "sd-broken", BROKEN))
    original_init = Component.__dict__["__init__"]
    try:
        blocks = build_ui(engine, argparse.Namespace(listen=False))
        grabber = next(s for s in engine.scripts.txt2img.alwayson_scripts if s.title() == "Grabber")
        assert Component.__dict__["__init__"] is original_init  # Gradio's own constructor is back
        yield engine, blocks, type(grabber)
    finally:
        close(engine)


def by_elem_id(blocks, elem_id):
    [component] = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return component


def test_after_component_gets_the_prompt_box_the_ui_uses(built):
    _, blocks, grabber = built
    prompt = by_elem_id(blocks, "txt2img_prompt")
    assert isinstance(prompt, gr.Textbox)
    assert grabber.grabbed["txt2img"] is prompt  # the very object the page renders, not a look-alike
    assert grabber.grabbed["img2img"] is by_elem_id(blocks, "img2img_prompt")
    callback_ids = {elem_id for who, elem_id, _ in grabber.events if who == "callback after"}
    assert {"txt2img_prompt", "txt2img_neg_prompt", "txt2img_generate", "txt2img_steps", "txt2img_cfg_scale",
            "txt2img_width", "txt2img_height", "txt2img_seed", "txt2img_sampling", "img2img_prompt",
            "img2img_generate"} <= callback_ids


def test_each_tabs_scripts_see_only_their_tabs_components_and_callbacks_see_all(built):
    _, _, grabber = built
    seen = {}
    for who, elem_id, _ in grabber.events:
        seen.setdefault(who, set()).add(elem_id)
    assert "txt2img_prompt" in seen["txt2img script after"] and "img2img_prompt" not in seen["txt2img script after"]
    assert "img2img_prompt" in seen["img2img script after"] and "txt2img_prompt" not in seen["img2img script after"]
    assert "inpaint_prompt" in seen["img2img script after"]  # A1111's inpaint is part of img2img
    # Outside the generation tabs (quicksettings, settings) only the callbacks are called, as in A1111.
    assert "setting_sd_model_checkpoint" in seen["callback after"]
    assert "setting_sd_model_checkpoint" not in seen["txt2img script after"] | seen["img2img script after"]
    assert "txt2img_toprow" not in seen["callback after"]  # a Row is a layout, not a component


def test_before_comes_before_after_for_the_same_component(built):
    _, blocks, grabber = built
    prompt = by_elem_id(blocks, "txt2img_prompt")
    order = [who for who, _, component in grabber.events if component is prompt]
    assert order == ["txt2img script before", "callback before", "callback after", "txt2img script after"]


def test_a_failing_hook_is_its_extensions_failure_and_the_build_goes_on(built):
    _, blocks, grabber = built
    failures = [f for f in extension_callbacks.app_failures if f.extension == "sd-broken"]
    wheres = sorted(f.where.split(" (")[0] for f in failures)
    # Once per hook, though the hooks raised for every component (after_component on two tabs' runners).
    assert wheres == ["after_component() of script 'Broken hooks'", "after_component() of script 'Broken hooks'",
                      "on_before_component callback before"]
    assert any(f.message == "ValueError: no component for me" for f in failures)
    assert by_elem_id(blocks, "txt2img_generate") is not None  # the UI is whole
    assert "txt2img_generate" in {e for who, e, _ in grabber.events if who == "txt2img script after"}


def test_after_the_build_creating_a_component_calls_no_hook(built):
    _, _, grabber = built
    count = len(grabber.events)
    with gr.Blocks():
        gr.Textbox(elem_id="txt2img_prompt")
    assert len(grabber.events) == count
    assert extension_callbacks.callbacks("after_component")  # still registered: only the patch is gone


def test_the_constructor_is_restored_when_the_build_fails():
    original_init = Component.__dict__["__init__"]
    with pytest.raises(RuntimeError, match="half built"):
        with component_hooks.installed():
            assert Component.__dict__["__init__"] is not original_init
            raise RuntimeError("half built")
    assert Component.__dict__["__init__"] is original_init
    with component_hooks.installed():  # and a later build can install it again
        pass
    assert Component.__dict__["__init__"] is original_init
