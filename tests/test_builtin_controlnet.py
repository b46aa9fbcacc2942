"""The built-in ControlNet extension (extensions-builtin/controlnet) through the real engine: tiny ControlNets
made from the tiny models' UNets, written in the original (lllyasviel) single-file layout and loaded by the
extension's own loader, in txt2img, img2img, inpaint and hires fix."""
import dataclasses
import hashlib
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.engine import Engine
from modules.extensions import BUILTIN_DIR, ExtensionManager, load_extensions
from modules.infotext import parse_infotext
from modules.jobs import JobState
from modules.paths import Paths
from modules.settings import Settings
from tests.builtin_helpers import close, request
from tests.test_api_helpers import b64_png
from tests.tiny_models import save_tiny_controlnet


def control_image(size=64) -> Image.Image:
    image = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    draw.rectangle((6, 6, size // 2, size // 2), fill=(240, 240, 240))
    draw.ellipse((size // 2, size // 3, size - 6, size - 6), outline=(255, 255, 255), width=3)
    return image


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ControlNet")
    save_tiny_controlnet(folder / "tiny-canny.safetensors", "sd1", seed=1)
    save_tiny_controlnet(folder / "tiny-other.safetensors", "sd1", seed=2)
    save_tiny_controlnet(folder / "tiny-canny-pickle.pth", "sd1", seed=1, pickle=True)
    save_tiny_controlnet(folder / "tiny-xl.safetensors", "sdxl", seed=3)
    return folder


class Payload:
    """Not a tensor: a pickle that needs this class must be refused."""


def controlnet_engine(tiny_dir, policy, work, controlnet_dir, checkpoint="tiny-sd1.safetensors") -> Engine:
    """An engine with only the controlnet built-in, reading ControlNets from `controlnet_dir`."""
    paths = dataclasses.replace(Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(work / "outputs")),
                                controlnet_dir=controlnet_dir)
    settings = Settings(file=work / "config.json")
    settings.set("sd_model_checkpoint", checkpoint)
    settings.set("samples_save", False)
    engine = Engine(paths, policy, settings)
    shutil.copytree(BUILTIN_DIR / "controlnet", work / "builtin" / "controlnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    manager = ExtensionManager(paths, settings, builtin_dir=work / "builtin", user_dir=work / "extensions")
    loaded = load_extensions(engine, manager=manager)
    assert not loaded.failures, [str(f) for f in loaded.failures]
    return engine


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory, controlnet_dir):
    eng = controlnet_engine(tiny_dir, policy, tmp_path_factory.mktemp("cn"), controlnet_dir)
    yield eng
    close(eng)


def unit(**kw) -> dict:
    base = {"enabled": True, "image": b64_png(control_image()), "module": "canny", "model": "tiny-canny",
            "processor_res": 64}
    return {**base, **kw}


def generate(engine, units=(), **kw):
    job = engine.generate(request(steps=4, alwayson_scripts={"controlnet": {"args": list(units)}}, **kw),
                          timeout=300)
    return job


def pixels(engine, units=(), **kw) -> np.ndarray:
    job = generate(engine, units, **kw)
    assert job.state == JobState.done, job.error
    assert not job.result.result.notes, job.result.result.notes
    return np.asarray(job.result.images[0]).astype(np.int16)


def differs(a, b) -> bool:
    return np.abs(a - b).mean() > 0.5


def test_an_enabled_unit_changes_the_image_and_weight_zero_or_disabled_do_not(engine):
    base = pixels(engine)
    job = generate(engine, [unit()])
    assert job.state == JobState.done, job.error
    controlled = np.asarray(job.result.images[0]).astype(np.int16)
    assert differs(controlled, base)
    assert np.array_equal(pixels(engine, [unit(weight=0)]), base)
    assert np.array_equal(pixels(engine, [unit(enabled=False)]), base)
    assert np.array_equal(pixels(engine, [unit(model="None")]), base)  # a preprocessor alone adds nothing
    assert np.array_equal(pixels(engine, [unit()]), controlled)  # repeatable (model cache, hint cache)
    info = parse_infotext(job.result.infotexts[0])
    with open(engine.paths.controlnet_dir / "tiny-canny.safetensors", "rb") as f:
        f.seek(0x100000)  # sd-webui-controlnet's model hash: A1111's old one, 64 KiB at 1 MiB
        hash8 = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    assert info["ControlNet 0"].startswith(f"Module: canny, Model: tiny-canny [{hash8}], Weight: 1.0, "
                                           "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 64, "
                                           "Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, "
                                           "Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced")
    assert info["ControlNet 0 module"] == "canny" and info["ControlNet 0 weight"] == 1.0  # on_infotext_pasted


def test_guidance_start_and_end_are_honoured(engine):
    base, full = pixels(engine), pixels(engine, [unit()])
    early = pixels(engine, [unit(guidance_end=0.3)])  # steps 0 of 4 (0.0, 0.25 ≤ 0.3)
    late = pixels(engine, [unit(guidance_start=0.5)])  # steps 2, 3
    never = pixels(engine, [unit(guidance_start=0.9, guidance_end=1.0)])  # 0.75 is the last step's fraction
    assert differs(early, base) and differs(early, full) and differs(late, full) and differs(late, early)
    assert np.array_equal(never, base)


def test_two_units_add_up(engine):
    one = pixels(engine, [unit()])
    halves = pixels(engine, [unit(weight=0.5), unit(weight=0.5)])
    assert np.abs(one - halves).max() <= 2  # residuals are linear in the weight and summed
    other = pixels(engine, [unit(model="tiny-other")])
    both = pixels(engine, [unit(), unit(model="tiny-other", module="invert")])
    assert differs(both, one) and differs(both, other)
    batch = engine.generate(request(steps=4, batch_size=2, alwayson_scripts={"controlnet": {"args": [unit()]}}),
                            timeout=300)
    assert batch.state == JobState.done, batch.error
    row = np.asarray(batch.result.images[0]).astype(np.int16)
    # A batch row is its seed alone, up to one level: the ControlNet's convolutions at another batch size may
    # round differently in float32.
    assert np.abs(row - one).max() <= 1 and np.abs(row - one).mean() < 0.01


def test_control_modes_and_the_pickle_file(engine):
    balanced = pixels(engine, [unit()])
    prompt = pixels(engine, [unit(control_mode="My prompt is more important")])
    control = pixels(engine, [unit(control_mode=2)])
    assert differs(prompt, balanced) and differs(control, balanced) and differs(control, prompt)
    assert np.array_equal(pixels(engine, [unit(model="tiny-canny-pickle")]), balanced)  # same weights, .pth


def test_img2img_inpaint_and_hires_fix(engine):
    init = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    i2i = dict(init_images=[init], denoising_strength=0.75)
    plain = pixels(engine, **i2i)
    assert differs(pixels(engine, [unit(image=None, use_img2img_image=True)], **i2i), plain)
    assert differs(pixels(engine, [unit(image=None)], **i2i), plain)  # no image of its own: the img2img one
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpaint = dict(i2i, mask=mask)
    plain_inpaint = pixels(engine, **inpaint)
    with_cn = pixels(engine, [unit(image=None, module="inpaint_only")], **inpaint)
    assert differs(with_cn, plain_inpaint)
    assert np.array_equal(with_cn[:, 44:], plain_inpaint[:, 44:])  # outside the (blurred) mask: the original
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6)
    plain_hr = pixels(engine, **hires)
    both = pixels(engine, [unit()], **hires)
    low_only = pixels(engine, [unit(hr_option="Low res only")], **hires)
    assert both.shape == (128, 128, 3) and differs(both, plain_hr) and differs(low_only, both)


def test_the_job_hands_back_the_detected_map_for_the_gallery(engine):
    """What the UI gallery shows: the generated image, then the map (no infotext of its own, never saved)."""
    job = generate(engine, [unit(resize_mode="Just Resize")], enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                   denoising_strength=0.6)
    assert job.state == JobState.done, job.error
    out = job.result
    assert len(out.images) == 2 and len(out.infotexts) == 1 and out.grid is None
    assert out.images[0].size == (128, 128)
    edges = cv2.Canny(np.asarray(control_image()), 100, 200)
    assert np.array_equal(np.asarray(out.images[1]), np.stack([edges] * 3, axis=2))  # at the first pass's size
    init = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    job = generate(engine, [unit(image=None, module="inpaint_only")], init_images=[init], mask=mask,
                   denoising_strength=0.75)
    assert job.state == JobState.done, job.error
    shown = np.asarray(job.result.images[1])
    assert (shown[:, :32] == 0).all() and np.array_equal(shown[:, 40:], np.asarray(init)[:, 40:])  # marked black


def test_only_masked_inpaint_cuts_the_control_image_to_the_generated_box(engine):
    """With "only masked", a control image of the picture's size is cut to the box that is generated, so giving
    that cut yourself makes the same pixels, and the uncut one differs from a misaligned whole-picture map."""
    init = control_image(96)
    mask = Image.new("L", (96, 96), 0)
    mask.paste(255, (50, 40, 80, 70))
    job = dict(init_images=[init], mask=mask, denoising_strength=0.75, inpaint_full_res=True,
               inpaint_full_res_padding=8, mask_blur=0)
    from modules.inpainting import only_masked_box

    box = only_masked_box(request(**job), init)
    assert box is not None and box != (0, 0, 96, 96)
    kw = dict(module="none", resize_mode="Just Resize")
    whole = pixels(engine, [unit(image=b64_png(init), **kw)], **job)
    cut = pixels(engine, [unit(image=b64_png(init.crop(box)), **kw)], **job)
    assert np.array_equal(whole, cut)
    uncut = pixels(engine, [unit(image=b64_png(init.resize((95, 95))), **kw)], **job)  # not cut: the whole picture
    assert differs(whole[40:70, 50:80], uncut[40:70, 50:80])


def test_a_unit_that_cant_run_fails_the_job_naming_it(engine):
    job = generate(engine, [unit(model="tiny-xl")])
    assert job.state == JobState.failed
    assert "ControlNet unit 0" in job.error and "made for SDXL checkpoints" in job.error and "is SD1.x" in job.error
    job = generate(engine, [unit(enabled=False), unit(model="nowhere")])
    assert job.state == JobState.failed and "ControlNet unit 1: ControlNet model 'nowhere' not found" in job.error
    job = generate(engine, [unit(image=None)])
    assert job.state == JobState.failed and "no input image" in job.error
    torch.save({"control_model.time_embed.0.weight": torch.zeros(1), "trainer": Payload()},
               engine.paths.controlnet_dir / "sneaky.pth")
    job = generate(engine, [unit(model="sneaky")])
    assert job.state == JobState.failed and "sneaky.pth can't be read" in job.error and "refused" in job.error
    assert np.array_equal(pixels(engine), pixels(engine, [unit(enabled=False)]))  # the next job is clean


def test_the_ui_accordion_sends_units_the_script_runs(engine):
    """Build the txt2img and img2img script areas as the app does; the unit states' values, made by the UI's
    own handler, become alwayson_scripts args that change the image like the API's."""
    from types import SimpleNamespace

    import gradio as gr

    from modules.ui import scripts_ui

    for is_img2img in (False, True):
        with gr.Blocks():
            ui = scripts_ui.build(SimpleNamespace(engine=engine), "img2img" if is_img2img else "txt2img", is_img2img)
        [(script, states)] = [(s, c) for s, c in ui.alwayson if s.title() == "ControlNet"]
        assert len(states) == 3 and all(isinstance(s, gr.State) for s in states)
        assert [c for c, _ in script.infotext_fields] == states
    handler = sys.modules["controlnet_ui"]  # the extension's module, as the app loaded it
    values = {"enabled": True, "image": control_image(), "use_img2img_image": False, "module": "canny",
              "model": "tiny-canny", "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0,
              "control_mode": "Balanced", "resize_mode": "Crop and Resize", "pixel_perfect": False,
              "processor_res": 64, "threshold_a": -1, "threshold_b": -1, "hr_option": "Both"}
    data = {ui.dropdown: "None", states[0]: handler.unit_args(*[values[f] for f in handler.FIELDS]),
            states[1]: None, states[2]: None}
    fields = ui.request_fields(data)
    from_ui = engine.generate(request(steps=4, **fields), timeout=300)
    assert from_ui.state == JobState.done, from_ui.error
    assert np.array_equal(np.asarray(from_ui.result.images[0]).astype(np.int16), pixels(engine, [unit()]))
    # Pasting its infotext back fills unit 0's state (the app's paste path), and its controls follow.
    updates = ui.paste(parse_infotext(from_ui.result.infotexts[0]))
    pasted = updates[states[0]]
    assert states[1] not in updates or updates[states[1]] == gr.update()
    assert {k: pasted[k] for k in ("enabled", "module", "weight", "processor_res", "threshold_b")} == {
        "enabled": True, "module": "canny", "weight": 1.0, "processor_res": 64, "threshold_b": 200.0}
    assert pasted["model"].startswith("tiny-canny [") and pasted["model"] in from_ui.result.infotexts[0]
    controls = dict(zip(handler.FIELDS, handler.unit_to_controls(pasted)))
    assert controls["module"]["value"] == "canny" and controls["image"] == {"__type__": "update"}
    assert handler.unit_to_controls(None) == [{"__type__": "update"}] * len(handler.FIELDS)


def test_sdxl_and_inpainting_checkpoints(engine):
    """SDXL ControlNets get SDXL's added conditioning; a 9-channel inpainting UNet's ControlNet reads the 4
    latent channels."""
    for checkpoint, model in (("tiny-sdxl.safetensors", "tiny-xl"), ("tiny-sd1-inpainting.safetensors",
                                                                       "tiny-canny")):
        overrides = {"override_settings": {"sd_model_checkpoint": checkpoint}}
        base = pixels(engine, **overrides)
        assert differs(pixels(engine, [unit(model=model)], **overrides), base)
    job = generate(engine, [unit(model="tiny-canny")], override_settings={"sd_model_checkpoint":
                                                                           "tiny-sdxl.safetensors"})
    assert job.state == JobState.failed and "made for SD1.x checkpoints" in job.error


def test_controlnet_gets_the_cpu_fast_path_with_the_same_pixels(engine):
    from modules import cpu_prepack

    library = sys.modules["atelier_extensions.controlnet.controlnet"].library  # the script module's one library
    engine.settings.set("cpu_prepack", False)
    try:
        plain = pixels(engine, [unit()])
        [(net, _)] = [entry for key, entry in library._loaded.items() if key[0].stem == "tiny-canny"]
        assert not cpu_prepack.is_prepacked(net)
        engine.settings.set("cpu_prepack", True)
        packed = pixels(engine, [unit()])
        assert cpu_prepack.is_prepacked(net)  # through api.optimize_for_inference, as an extension would
        assert np.abs(packed - plain).max() <= 1
    finally:
        engine.settings.set("cpu_prepack", True)
