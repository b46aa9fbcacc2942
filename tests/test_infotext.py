import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules.errors import ValidationError
from modules.infotext import (
    RE_IMAGESIZE,
    SCHEDULERS,
    create_infotext,
    generation_extras,
    parse_infotext,
    quote,
    request_from_infotext,
    unquote,
)
from modules.request import GenerationRequest

MODEL = dict(model_name="v1-5-pruned-emaonly", model_hash="6ce0161689")


def info(req: GenerationRequest, **kw) -> str:
    args = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, seed=1234, subseed=99, **MODEL)
    args.update(kw)
    return create_infotext(req, **args)


# ---- writing: exact strings as A1111 v1.10 writes them ----

def test_a1111_sample_byte_for_byte():
    req = GenerationRequest(
        prompt="a cat, (masterpiece:1.2)", negative_prompt="blurry", sampler_name="DPM++ 2M", scheduler="Karras",
        cfg_scale=7, steps=20, width=512, height=768, override_settings={"CLIP_stop_at_last_layers": 2},
    )
    assert info(req, version="v1.10.1") == (
        "a cat, (masterpiece:1.2)\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: v1.10.1"
    )


def test_floats_print_as_stored_and_empty_negative_is_left_out():
    req = GenerationRequest(prompt="a dog", sampler_name="Euler a", scheduler="Automatic", cfg_scale=7.0)
    assert info(req, seed=3001968073) == (
        "a dog\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 3001968073, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly"
    )


def test_empty_prompts_leave_only_the_params_line():
    text = info(GenerationRequest(cfg_scale=7.5), model_name=None, model_hash=None)
    assert text == "Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7.5, Seed: 1234, Size: 512x512"


def test_values_with_commas_colons_newlines_are_json_quoted():
    req = GenerationRequest(prompt="p")
    text = info(
        req, model_name="my, model", model_hash=None, vae_name="モデル: v2", vae_hash="abc",
        extra={"Lora hashes": "detail: aabbcc, style: ddeeff", "Note": "two\nlines", "Plain": 'say "hi"'},
    )
    assert text.splitlines()[1] == (
        'Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7.0, Seed: 1234, Size: 512x512, '
        'Model: "my, model", VAE hash: abc, VAE: "モデル: v2", Lora hashes: "detail: aabbcc, style: ddeeff", '
        'Note: "two\\nlines", Plain: say "hi"'
    )
    assert len(text.splitlines()) == 2  # the newline stays escaped inside the quotes
    d = parse_infotext(text)
    assert (d["Model"], d["VAE"], d["Note"], d["Plain"]) == ("my, model", "モデル: v2", "two\nlines", 'say "hi"')
    assert d["Lora hashes"] == "detail: aabbcc, style: ddeeff"


def test_quote_and_unquote():
    assert quote(7) == 7 and quote("plain") == "plain"
    assert quote("a, b") == '"a, b"'
    assert quote('x: "y"') == '"x: \\"y\\""'
    assert unquote('"x: \\"y\\""') == 'x: "y"'
    assert unquote('"broken') == '"broken' and unquote("") == ""


def test_variation_seed_and_seed_resize():
    req = GenerationRequest(prompt="p", subseed_strength=0.3, seed_resize_from_w=640, seed_resize_from_h=448)
    line = info(req, model_name=None, model_hash=None, subseed=42).splitlines()[1]
    assert line.endswith("Size: 512x512, Variation seed: 42, Variation seed strength: 0.3, Seed resize from: 640x448")
    # Strength 0 hides the variation seed; one side 0 hides seed resize.
    req2 = req.copy(subseed_strength=0, seed_resize_from_h=0)
    assert "Variation" not in info(req2) and "Seed resize" not in info(req2)


def test_hires_params_in_a1111_order():
    req = GenerationRequest(prompt="p", enable_hr=True, hr_scale=2, hr_second_pass_steps=10,
                            hr_upscaler="R-ESRGAN 4x+", denoising_strength=0.45)
    text = info(req, model_name=None, model_hash=None, extra=generation_extras(req), version="v1.10.1")
    assert text.splitlines()[1] == (
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7.0, Seed: 1234, Size: 512x512, "
        "Denoising strength: 0.45, Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, Version: v1.10.1"
    )
    resized = req.copy(hr_resize_x=1024, hr_resize_y=0, hr_second_pass_steps=0)
    assert "Denoising strength: 0.45, Hires resize: 1024x0, Hires upscaler: R-ESRGAN 4x+" in info(
        resized, extra=generation_extras(resized))
    # txt2img without hires writes no denoising strength
    assert "Denoising" not in info(req.copy(enable_hr=False))


def test_inpaint_params_in_a1111_order():
    img = Image.new("RGB", (8, 8))
    req = GenerationRequest(prompt="p", init_images=[img], mask=img, mask_blur=2, inpainting_mask_invert=1,
                            inpaint_full_res=True, inpaint_full_res_padding=32, inpainting_fill=0)
    line = info(req, model_name=None, model_hash=None, extra=generation_extras(req)).splitlines()[1]
    assert line.endswith(
        "Size: 512x512, Denoising strength: 0.75, Mask blur: 2, Mask mode: Inpaint not masked, "
        "Inpaint area: Only masked, Masked area padding: 32, Masked content: fill"
    )
    plain = req.copy(inpainting_mask_invert=0, inpaint_full_res=False, inpainting_fill=1)
    assert info(plain, extra=generation_extras(plain)).endswith("Denoising strength: 0.75, Mask blur: 2")


def test_extra_keeps_the_place_of_a_fixed_key_and_bare_flags():
    req = GenerationRequest(prompt="p", scheduler="Automatic", override_settings={"randn_source": "CPU"})
    text = info(req, model_name=None, model_hash=None, extra={"Schedule type": "Karras", "Tiled": "Tiled"})
    assert text.splitlines()[1] == (
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x512, "
        "RNG: CPU, Tiled"
    )


# ---- reading ----

A1111_TEXT = (
    "masterpiece, best quality, <lora:add_detail:0.6>\n1girl\n"
    "Negative prompt: (worst quality:1.4), lowres\nbad hands\n"
    'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 3484050600, Size: 832x1216, '
    'Model hash: 4fc2b075ab, Model: animaXL_v10, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.0'
)


def test_parse_a1111_text():
    d = parse_infotext(A1111_TEXT)
    assert d["Prompt"] == "masterpiece, best quality, <lora:add_detail:0.6>\n1girl"
    assert d["Negative prompt"] == "(worst quality:1.4), lowres\nbad hands"
    assert (d["Steps"], d["Sampler"], d["Schedule type"], d["CFG scale"]) == ("28", "DPM++ 2M", "Karras", "5")
    assert (d["Size-1"], d["Size-2"], d["Seed"]) == ("832", "1216", "3484050600")
    assert d["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert d["Model hash"] == "4fc2b075ab" and d["Version"] == "v1.10.0"
    # A1111's defaults for what the text leaves out
    assert d["Clip skip"] == "1" and d["RNG"] == "GPU" and d["Hires resize-1"] == 0
    assert d["Masked content"] == "original" and d["Inpaint area"] == "Whole picture"


@pytest.mark.parametrize("sampler, schedule, want", [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Exponential")),
    ("Euler SGMUniform", None, ("Euler", "SGM Uniform")),
    ("Euler SGM Uniform", None, ("Euler", "SGM Uniform")),
    ("DPM++ 2M Karras", "Exponential", ("DPM++ 2M", "Karras")),  # the name's suffix wins, as in A1111
    ("Euler a", None, ("Euler a", "Automatic")),
    ("DPM++ 2M SDE Heun", "karras", ("DPM++ 2M SDE Heun", "Karras")),  # internal names become labels
])
def test_legacy_sampler_names_are_split(sampler, schedule, want):
    text = f"p\nSteps: 20, Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "") + "CFG scale: 7"
    d = parse_infotext(text)
    assert (d["Sampler"], d["Schedule type"]) == want
    req = request_from_infotext(text)
    assert (req.sampler_name, req.scheduler) == want


def test_text_without_params_line_is_all_prompt():
    assert parse_infotext("a cat, sitting\nNegative prompt: dog")["Prompt"] == "a cat, sitting"
    d = parse_infotext("a cat\nSteps: 20, Seed: 5")  # fewer than 3 pairs: still prompt
    assert d["Prompt"] == "a cat\nSteps: 20, Seed: 5" and "Steps" not in d


def test_old_first_pass_size_becomes_hires_resize():
    text = "p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Size: 1024x1024, Denoising strength: 0.7, First pass size: 0x0"
    req = request_from_infotext(text)
    assert (req.width, req.height, req.hr_resize_x, req.hr_resize_y, req.enable_hr) == (512, 512, 1024, 1024, True)
    kept = request_from_infotext(text.replace("0x0", "640x448"))
    assert (kept.width, kept.height, kept.hr_resize_x, kept.hr_resize_y) == (640, 448, 1024, 1024)
    request_from_infotext("p\nSteps: 2, Size: 0x0, First pass size: 0x0")  # nonsense, but no crash


def test_request_from_infotext_keeps_the_base_for_the_rest():
    base = GenerationRequest(batch_size=4, styles=["s"], enable_hr=True, subseed_strength=0.5, seed_resize_from_w=64,
                             seed_resize_from_h=64,
                             override_settings={"CLIP_stop_at_last_layers": 3, "sd_vae": "x.pt", "other": 1})
    req = request_from_infotext(A1111_TEXT, base=base)
    assert (req.batch_size, req.styles) == (4, ["s"])
    assert (req.steps, req.cfg_scale, req.seed, req.width, req.height) == (28, 5, 3484050600, 832, 1216)
    assert isinstance(req.cfg_scale, int)
    # the text states clip skip 1, no hires, no variation, no seed resize
    assert req.override_settings == {"sd_vae": "x.pt", "other": 1, "sd_model_checkpoint": "animaXL_v10"}
    assert req.clip_skip == 1 and not req.enable_hr and req.subseed_strength == 0
    assert (req.seed_resize_from_w, req.seed_resize_from_h) == (0, 0)
    assert "Model hash" not in str(req.override_settings)
    assert base.override_settings["CLIP_stop_at_last_layers"] == 3  # base untouched


def test_img2img_infotext_does_not_turn_on_hires():
    text = "p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.75, Mask blur: 4"
    req = request_from_infotext(text)
    assert not req.enable_hr and req.denoising_strength == 0.75 and req.mask_blur == 4


def test_bad_numbers_name_the_field():
    with pytest.raises(ValidationError) as e:
        request_from_infotext("p\nSteps: many, Sampler: Euler, CFG scale: 7")
    assert e.value.field == "steps"
    with pytest.raises(ValidationError) as e:
        request_from_infotext("p\nSteps: 2, Sampler: Euler, CFG scale: seven")
    assert e.value.field == "cfg_scale"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(',:"x0123456789\n')),
               max_size=200))
def test_parse_never_raises(text):
    d = parse_infotext(text)
    assert isinstance(d["Prompt"], str) and isinstance(d["Negative prompt"], str)
    try:
        request_from_infotext(text)
    except ValidationError:
        pass  # a value that isn't a number is reported, never a crash


# ---- round trip over random requests ----

def _line(s: str) -> bool:
    return not s.startswith("Negative prompt:")


_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
# Prompts: any text, with commas, colons, quotes, unicode; lines as A1111 keeps them (stripped, and
# none starting with "Negative prompt:", which the format can't tell from the negative prompt).
_prompt_line = st.text(alphabet=st.one_of(_chars, st.sampled_from(',:"()[]<>\\')), max_size=40).map(str.strip).filter(_line)
PROMPTS = st.lists(_prompt_line, max_size=4).map(lambda lines: "\n".join(lines).strip())


def _name_ok(s: str) -> bool:
    # What the format can carry in a value: no outer whitespace (stripped), no leading quote (read as
    # JSON), nothing shaped like WxH (split into -1/-2). Newlines, commas and colons are fine (quoted).
    return bool(s) and s == s.strip() and not s.startswith('"') and not RE_IMAGESIZE.match(s)


NAMES = st.text(alphabet=st.one_of(_chars, st.sampled_from(',:"\n')), min_size=1, max_size=30).filter(_name_ok)
SAMPLERS = st.sampled_from(["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M",
                            "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DDIM", "PLMS",
                            "UniPC", "LCM", "Restart", "DPM fast", "DPM adaptive"])
SIDES = st.integers(8, 1024).map(lambda n: n * 8)
UNIT = st.one_of(st.floats(0, 1), st.sampled_from([0, 1]))


@st.composite
def requests(draw):
    mode = draw(st.sampled_from(["txt2img", "img2img", "inpaint"]))
    img = Image.new("RGB", (8, 8))
    overrides = {}
    clip_skip = draw(st.integers(1, 12))
    if clip_skip > 1 or draw(st.booleans()):
        overrides["CLIP_stop_at_last_layers"] = clip_skip
    rng = draw(st.sampled_from([None, "GPU", "CPU", "NV"]))
    if rng:
        overrides["randn_source"] = rng
    req = GenerationRequest(
        prompt=draw(PROMPTS), negative_prompt=draw(PROMPTS),
        steps=draw(st.integers(1, 1000)), sampler_name=draw(SAMPLERS), scheduler=draw(st.sampled_from(list(SCHEDULERS))),
        cfg_scale=draw(st.one_of(st.integers(0, 100), st.floats(0, 100))),
        width=draw(SIDES), height=draw(SIDES),
        subseed_strength=draw(st.one_of(st.just(0.0), UNIT)),
        seed_resize_from_w=draw(st.one_of(st.just(0), SIDES)), seed_resize_from_h=draw(st.one_of(st.just(0), SIDES)),
        denoising_strength=draw(UNIT),
        init_images=[img] if mode != "txt2img" else [], mask=img if mode == "inpaint" else None,
        mask_blur=draw(st.integers(0, 256)), inpainting_fill=draw(st.integers(0, 3)),
        inpaint_full_res=draw(st.booleans()), inpaint_full_res_padding=draw(st.integers(0, 1024)),
        inpainting_mask_invert=draw(st.integers(0, 1)),
        enable_hr=mode == "txt2img" and draw(st.booleans()),
        hr_scale=draw(st.one_of(st.integers(1, 8), st.floats(1, 8))), hr_upscaler=draw(NAMES),
        hr_second_pass_steps=draw(st.integers(0, 1000)),
        hr_resize_x=draw(st.one_of(st.just(0), SIDES)), hr_resize_y=draw(st.one_of(st.just(0), SIDES)),
        override_settings=overrides,
    )
    return req.validate()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    req=requests(),
    seed=st.integers(0, 2**32 - 1), subseed=st.integers(0, 2**32 - 1),
    model_name=st.one_of(st.none(), NAMES), model_hash=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{10}", fullmatch=True)),
    vae_name=st.one_of(st.none(), NAMES), vae_hash=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{10}", fullmatch=True)),
)
def test_round_trip(req, seed, subseed, model_name, model_hash, vae_name, vae_hash):
    kw = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, seed=seed, subseed=subseed,
              model_name=model_name, model_hash=model_hash, vae_name=vae_name, vae_hash=vae_hash, version="v1.10.1")
    text = create_infotext(req, extra=generation_extras(req), **kw)
    # The infotext doesn't carry the images: the base supplies them, as the UI does.
    back = request_from_infotext(text, base=GenerationRequest(init_images=req.init_images, mask=req.mask)).validate()

    assert (back.prompt, back.negative_prompt) == (req.prompt, req.negative_prompt)
    assert (back.steps, back.sampler_name, back.scheduler, back.seed) == (req.steps, req.sampler_name, req.scheduler, seed)
    assert back.cfg_scale == req.cfg_scale and type(back.cfg_scale) is type(req.cfg_scale)
    assert (back.width, back.height) == (req.width, req.height)
    if req.subseed_strength:
        assert (back.subseed, back.subseed_strength) == (subseed, req.subseed_strength)
    else:
        assert back.subseed_strength == 0
    if req.seed_resize_from_w and req.seed_resize_from_h:
        assert (back.seed_resize_from_w, back.seed_resize_from_h) == (req.seed_resize_from_w, req.seed_resize_from_h)
    if req.is_img2img or req.enable_hr:
        assert back.denoising_strength == req.denoising_strength
    assert back.enable_hr == req.enable_hr
    if req.enable_hr:
        assert (back.hr_upscaler, back.hr_second_pass_steps) == (req.hr_upscaler, req.hr_second_pass_steps)
        assert (back.hr_resize_x, back.hr_resize_y) == (req.hr_resize_x, req.hr_resize_y)
        if not (req.hr_resize_x or req.hr_resize_y):
            assert back.hr_scale == req.hr_scale
    if req.mask is not None:
        assert (back.mask_blur, back.inpainting_fill, back.inpainting_mask_invert, back.inpaint_full_res) == (
            req.mask_blur, req.inpainting_fill, req.inpainting_mask_invert, req.inpaint_full_res)
        if req.inpaint_full_res:
            assert back.inpaint_full_res_padding == req.inpaint_full_res_padding
    assert back.clip_skip == req.clip_skip
    assert back.override_settings.get("randn_source", "GPU") == req.override_settings.get("randn_source", "GPU")
    assert back.checkpoint == model_name and back.vae == vae_name
    if model_hash:
        assert parse_infotext(text)["Model hash"] == model_hash
    # Strongest check: the request read back writes the very same text.
    assert create_infotext(back, extra=generation_extras(back), **kw) == text


def test_pasted_emphasis_becomes_a_request_override():
    req = request_from_infotext("a (cat:1.3)\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Emphasis: No norm")
    assert req.override_settings["emphasis"] == "No norm"
    plain = request_from_infotext("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512")
    assert "emphasis" not in plain.override_settings
