"""Two extensions written in A1111's style (tests/extensions_a1111) run unmodified through the real engine."""
import pytest
from PIL import Image

from modules import extension_api, extension_callbacks, shared
from modules.infotext import read_image_infotext
from modules.jobs import JobState
from modules.settings import OPTIONS
from tests.extension_helpers import A1111_EXTENSIONS, close, load_from, make_engine, request


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path)
    load_from(eng, tmp_path, A1111_EXTENSIONS / "prompt-suffix", A1111_EXTENSIONS / "hello-tab")
    yield eng
    close(eng)


def test_prompt_suffix_rewrites_every_prompt_and_reaches_the_infotext_and_the_file(engine):
    job = engine.generate(request(batch_size=2, n_iter=2), timeout=120)
    assert job.state == JobState.done, job.error
    out = job.result
    assert len(out.images) == 4 and len(out.paths) == 4
    for text, path in zip(out.infotexts, out.paths):
        assert text.startswith("a lighthouse, masterpiece\nNegative prompt: blurry\n")
        assert "Prompt suffix: masterpiece" in text
        assert read_image_infotext(Image.open(path))[0] == text
    assert out.result.prompts == ["a lighthouse, masterpiece"] * 4
    assert out.result.seeds == [7, 8, 9, 10]
    [script] = engine.scripts.txt2img.alwayson_scripts
    assert script.seen_batches == [(0, ["a lighthouse, masterpiece"] * 2, [7, 8]),
                                   (1, ["a lighthouse, masterpiece"] * 2, [9, 10])]


def test_suffix_makes_the_same_image_as_asking_for_the_suffixed_prompt(engine):
    with_script = engine.generate(request(), timeout=120).result.images[0]
    plain = engine.generate(request(prompt="a lighthouse, masterpiece",
                                    alwayson_scripts={"prompt suffix": {"args": [False, ""]}}), timeout=120)
    assert plain.result.infotexts[0].startswith("a lighthouse, masterpiece\n")
    assert "Prompt suffix" not in plain.result.infotexts[0]
    assert list(with_script.getdata()) == list(plain.result.images[0].getdata())


def test_alwayson_args_from_the_request_reach_the_script(engine):
    job = engine.generate(request(alwayson_scripts={"Prompt Suffix": {"args": [True, ", golden hour"]}}),
                          timeout=120)
    assert job.state == JobState.done, job.error
    assert job.result.infotexts[0].startswith("a lighthouse, golden hour\n")
    assert "Prompt suffix: golden hour" in job.result.infotexts[0]


def test_img2img_gets_the_img2img_processing_class(engine):
    job = engine.generate(request(init_images=[Image.new("RGB", (64, 64), "gray")], denoising_strength=0.5),
                          timeout=120)
    assert job.state == JobState.done, job.error
    assert "Prompt suffix mode: img2img" in job.result.infotexts[0]


def test_hello_tab_adds_its_tab_and_its_settings(engine):
    option = OPTIONS["hello_tab_greeting"]
    assert (option.default, option.section) == ("Hello", "Hello tab")
    assert (OPTIONS["hello_tab_repeat"].minimum, OPTIONS["hello_tab_repeat"].maximum) == (1, 5)
    assert extension_api.setting_owners["hello_tab_greeting"] == "hello-tab"
    assert engine.settings.get("hello_tab_greeting") == "Hello"
    assert shared.opts.hello_tab_repeat == 2 and shared.opts.data["hello_tab_greeting"] == "Hello"

    engine.settings.set("hello_tab_greeting", "Bonjour")
    [tab] = extension_callbacks.run_ui_tabs()
    assert (tab.title, tab.elem_id, tab.extension) == ("Hello", "hello_tab", "hello-tab")
    blocks = tab.component.blocks.values()
    markdown = next(block for block in blocks if getattr(block, "elem_id", "") == "hello_tab_text")
    assert markdown.value == "Bonjour Bonjour"
    assert "hello_tab_greeting" in engine.settings.file.read_text()

    shared.opts.hello_tab_repeat = 3  # A1111 code sets options by attribute, too
    assert engine.settings.get("hello_tab_repeat") == 3


def test_a1111_module_paths_serve_the_public_names():
    import modules.images as images
    import modules.processing as processing
    import modules.scripts as scripts

    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=3, sd_model=None, outpath_samples="o")
    assert (p.prompt, p.steps, p.outpath_samples) == ("x", 3, "o")
    assert p.to_request().steps == 3
    processing.fix_seed(p)
    assert p.seed >= 0
    assert scripts.AlwaysVisible is not None and callable(images.save_image)
    with pytest.raises(AttributeError):
        processing.no_such_name


def test_extension_built_with_ui_components_and_paths_internal(tiny_dir, policy, tmp_path):
    import sys

    import gradio as gr

    from modules import paths_internal
    from modules.paths import REPO_ROOT
    from modules.ui import scripts_ui
    from modules.ui_components import InputAccordion

    eng = make_engine(tiny_dir, policy, tmp_path)
    try:
        eng.extensions = load_from(eng, tmp_path, A1111_EXTENSIONS / "form-ui")  # as webui.py keeps it
        script = eng.scripts.txt2img.find("Form UI", alwayson=True)
        assert [(a.label, a.value) for a in eng.scripts.txt2img.arg_spec(script)] == [("Form UI", False),
                                                                                       ("Words", ["calm"])]
        seen = sys.modules[type(script).__module__].SEEN_PATHS
        assert seen["script_path"] == paths_internal.script_path == str(REPO_ROOT)
        assert seen["models_path"] == str(tiny_dir / "models") == paths_internal.models_path
        assert paths_internal.extensions_dir == str(tmp_path / "extensions")
        assert paths_internal.extensions_builtin_dir == str(REPO_ROOT / "extensions-builtin")
        with pytest.raises(AttributeError):
            paths_internal.no_such_path

        with gr.Blocks() as blocks:
            ui = scripts_ui.build(type("Ctx", (), {"engine": eng})(), "txt2img", False)
        [(_, components)] = ui.alwayson
        enabled, words = components
        assert isinstance(enabled, InputAccordion) and words.multiselect
        types = {c["id"]: c["type"] for c in blocks.get_config_file()["components"]}
        assert types[enabled._id] == "checkbox" and types[enabled.accordion._id] == "accordion"
        assert "formrow" not in set(types.values()) and not (REPO_ROOT / "modules" / "ui_components.pyi").exists() \
            and not (REPO_ROOT / "modules" / "ui" / "a1111_components.pyi").exists()
        # Opening the accordion sets the checkbox, and setting the checkbox opens the accordion.
        triggers = {(t[0], t[1]) for fn in blocks.fns.values() for t in fn.targets}
        accordion = enabled.accordion._id
        assert {(accordion, "expand"), (accordion, "collapse"), (enabled._id, "change")} <= triggers

        fields = ui.request_fields({ui.dropdown: "None", enabled: True, words: ["stormy", "night"]})
        job = eng.generate(request(**fields), timeout=120)
        assert job.state == JobState.done, job.error
        text = job.result.infotexts[0]
        assert "Form UI: stormy+night" in text and "Form UI folder: form-ui" in text
    finally:
        close(eng)
