"""Infotext: the generation parameters text A1111 stores in images (the PNG `parameters` chunk).

Written byte for byte as A1111 v1.10 writes it (processing.create_infotext) and read back as its
infotext_utils.parse_generation_parameters reads it, so images move between the two both ways.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Optional

import piexif
import piexif.helper
from PIL import Image

from modules import extension_callbacks
from modules.errors import ValidationError
from modules.request import INPAINTING_FILL, GenerationRequest

# A1111's regexes: one `Key: value` pair (value JSON-quoted, or up to the next comma), and `WxH`.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

# A1111's schedulers: label -> other spellings it accepts (internal name, aliases).
SCHEDULERS: dict[str, tuple[str, ...]] = {
    "Automatic": ("automatic",), "Uniform": ("uniform",), "Karras": ("karras",), "Exponential": ("exponential",),
    "Polyexponential": ("polyexponential",), "SGM Uniform": ("sgm_uniform", "SGMUniform"),
    "KL Optimal": ("kl_optimal",), "Align Your Steps": ("align_your_steps",), "Simple": ("simple",),
    "Normal": ("normal",), "DDIM": ("ddim",), "Beta": ("beta",),
}
_SCHEDULER_LABEL = {spelling: label for label, rest in SCHEDULERS.items() for spelling in (label, *rest)}
# Longest first, so the legacy "Euler SGM Uniform" splits as "Euler" + "SGM Uniform", not "Euler SGM" + "Uniform".
_SCHEDULER_SUFFIXES = sorted(_SCHEDULER_LABEL, key=len, reverse=True)

# What A1111 assumes for keys an infotext leaves out: it writes nothing when the default was used.
_DEFAULTS: dict[str, object] = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Mask mode": "Inpaint masked",
    "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32,
    "RNG": "GPU", "Schedule type": "Automatic",
}
# Any of these next to "Denoising strength" means the txt2img had hires fix on (A1111's paste rule).
_HIRES_MARKERS = ("Hires upscale", "Hires upscaler", "Hires resize-1", "First pass size-1")

# PIL info keys that are format plumbing, not metadata worth showing (A1111's IGNORED_INFO_KEYS).
_IGNORED_INFO_KEYS = {
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
    "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
}


def quote(value: object) -> object:
    """JSON-quote a value only when a comma, colon or newline would break the `Key: value, ...` line."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return str(json.loads(text))
    except ValueError:
        return text


def generation_extras(request: GenerationRequest) -> dict[str, object]:
    """The hires / inpaint keys A1111 adds to extra_generation_params, in the order it adds them."""
    extras: dict[str, object] = {}
    if request.is_img2img:
        if request.mask is not None:
            extras["Mask blur"] = request.mask_blur  # the img2img UI always sets it when there is a mask
            if request.inpainting_mask_invert:
                extras["Mask mode"] = "Inpaint not masked"
            if request.inpaint_full_res:
                extras["Inpaint area"] = "Only masked"
                extras["Masked area padding"] = request.inpaint_full_res_padding
            if request.inpainting_fill != 1:  # 1 ("original") is the default and goes unwritten
                extras["Masked content"] = INPAINTING_FILL[request.inpainting_fill]
    elif request.enable_hr:
        if request.hr_resize_x == 0 and request.hr_resize_y == 0:
            extras["Hires upscale"] = request.hr_scale
        else:
            extras["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
        if request.hr_second_pass_steps:
            extras["Hires steps"] = request.hr_second_pass_steps
        if request.hr_upscaler:
            extras["Hires upscaler"] = request.hr_upscaler
    return extras


def create_infotext(
    request: GenerationRequest,
    *,
    prompt: str,
    negative_prompt: str,
    seed: int,
    subseed: int,
    model_name: Optional[str],
    model_hash: Optional[str],
    vae_name: Optional[str] = None,
    vae_hash: Optional[str] = None,
    extra: Optional[dict[str, object]] = None,
    version: Optional[str] = None,
) -> str:
    """The infotext for one image. Values print as stored (cfg 7 -> "7", 7.0 -> "7.0"), as in A1111.

    `extra` follows the fixed keys, except that a key already among them keeps its place and takes the
    new value: that is how A1111 writes the resolved "Schedule type" (e.g. Karras for "Automatic" with
    DPM++ 2M), so callers who know the sampler's default scheduler pass {"Schedule type": label}.
    """
    varied = request.subseed_strength != 0
    resize_w, resize_h = request.seed_resize_from_w, request.seed_resize_from_h
    clip_skip = request.clip_skip
    rng = request.override_settings.get("randn_source")
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": request.scheduler or None,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Variation seed": subseed if varied else None,
        "Variation seed strength": request.subseed_strength if varied else None,
        "Seed resize from": f"{resize_w}x{resize_h}" if resize_w > 0 and resize_h > 0 else None,
        "Denoising strength": request.denoising_strength if request.is_img2img or request.enable_hr else None,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "RNG": rng if rng not in (None, "GPU") else None,
    }
    params.update(extra or {})
    params["Version"] = version
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def split_sampler_name(sampler: str, scheduler: str) -> tuple[str, str]:
    """Legacy names carried the scheduler: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras").
    Scheduler spellings become labels ("karras" -> "Karras"); unknown ones pass through."""
    for suffix in _SCHEDULER_SUFFIXES:
        if sampler.endswith(" " + suffix):
            return sampler[: -len(suffix) - 1], _SCHEDULER_LABEL[suffix]
    return sampler, _SCHEDULER_LABEL.get(scheduler, scheduler)


def _parse(text: str) -> tuple[dict[str, object], set[str]]:
    """Parsed infotext with A1111's defaults filled in, and the keys the text itself carried."""
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:  # too few pairs: the last line is still prompt text
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line

    res: dict[str, object] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in RE_PARAM.findall(last):
        value = unquote(value)
        size = RE_IMAGESIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    carried = set(res)
    for key, default in _DEFAULTS.items():
        res.setdefault(key, default)
    _restore_old_hires_fix(res)
    res["Sampler"], res["Schedule type"] = split_sampler_name(str(res.get("Sampler", "")), str(res["Schedule type"]))
    if not res["Sampler"]:
        del res["Sampler"]
    # As in A1111, extensions see every pasted infotext (LoRA maps hashes in tags to local files here).
    before = set(res)
    extension_callbacks.run_infotext_pasted(text, res)
    return res, carried | (set(res) - before)


def _restore_old_hires_fix(res: dict[str, object]) -> None:
    """Infotexts before Jan 2023 wrote the final size plus "First pass size"; turn that into today's keys."""
    if "First pass size-1" not in res or "First pass size-2" not in res:
        return
    first_w, first_h = int(str(res["First pass size-1"])), int(str(res["First pass size-2"]))
    width, height = int(str(res.get("Size-1", 512))), int(str(res.get("Size-2", 512)))
    if (first_w == 0 or first_h == 0) and width and height:  # 0x0 meant "pick for me": about 512*512 pixels
        scale = math.sqrt(512 * 512 / (width * height))
        first_w, first_h = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = str(first_w), str(first_h)
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def parse_infotext(text: str) -> dict[str, object]:
    """Every key of the infotext (values unquoted, `WxH` split into -1/-2), plus A1111's defaults."""
    return _parse(text)[0]


def _to_int(d: dict[str, object], key: str, field: str) -> int:
    try:
        return int(str(d[key]).strip())
    except ValueError:
        raise ValidationError(field, f"infotext {key!r} is not an integer: {d[key]!r}") from None


def _to_number(d: dict[str, object], key: str, field: str) -> float:
    """Ints stay ints ("7" -> 7), so a value prints back exactly as it was read."""
    text = str(d[key]).strip()
    try:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    except ValueError:
        raise ValidationError(field, f"infotext {key!r} is not a number: {d[key]!r}") from None


def request_from_infotext(text: str, base: Optional[GenerationRequest] = None) -> GenerationRequest:
    """A request that reproduces the infotext, on top of `base` for what the text doesn't say.

    Not validated: the caller validates. "Model hash" goes nowhere here; read it from parse_infotext.
    """
    d, carried = _parse(text)
    req = base or GenerationRequest()
    changes: dict[str, Any] = {"prompt": d["Prompt"], "negative_prompt": d["Negative prompt"]}
    for key, field in (("Steps", "steps"), ("Seed", "seed"), ("Size-1", "width"), ("Size-2", "height"),
                       ("Mask blur", "mask_blur")):
        if key in d:
            changes[field] = _to_int(d, key, field)
    for key, field in (("CFG scale", "cfg_scale"), ("Denoising strength", "denoising_strength")):
        if key in d:
            changes[field] = _to_number(d, key, field)
    if "Sampler" in d:
        changes["sampler_name"] = str(d["Sampler"])
    changes["scheduler"] = str(d["Schedule type"])

    # Missing keys mean "not used": no variation seed, no seed resize.
    if "Variation seed" in d:
        changes["subseed"] = _to_int(d, "Variation seed", "subseed")
        changes["subseed_strength"] = _to_number(d, "Variation seed strength", "subseed_strength") \
            if "Variation seed strength" in d else 0.0
    else:
        changes["subseed_strength"] = 0.0
    if "Seed resize from-1" in d:
        changes["seed_resize_from_w"] = _to_int(d, "Seed resize from-1", "seed_resize_from_w")
        changes["seed_resize_from_h"] = _to_int(d, "Seed resize from-2", "seed_resize_from_h")
    else:
        changes["seed_resize_from_w"] = changes["seed_resize_from_h"] = 0

    changes["enable_hr"] = "Denoising strength" in carried and any(k in carried for k in _HIRES_MARKERS)
    if changes["enable_hr"]:
        if "Hires upscale" in d:
            changes["hr_scale"] = _to_number(d, "Hires upscale", "hr_scale")
        if "Hires upscaler" in d:
            changes["hr_upscaler"] = str(d["Hires upscaler"])
        changes["hr_second_pass_steps"] = _to_int(d, "Hires steps", "hr_second_pass_steps") if "Hires steps" in d else 0
        changes["hr_resize_x"] = _to_int(d, "Hires resize-1", "hr_resize_x")
        changes["hr_resize_y"] = _to_int(d, "Hires resize-2", "hr_resize_y")

    changes["inpainting_mask_invert"] = 1 if d["Mask mode"] == "Inpaint not masked" else 0
    if d["Masked content"] in INPAINTING_FILL:
        changes["inpainting_fill"] = INPAINTING_FILL.index(str(d["Masked content"]))
    changes["inpaint_full_res"] = d["Inpaint area"] == "Only masked"
    changes["inpaint_full_res_padding"] = _to_int(d, "Masked area padding", "inpaint_full_res_padding")

    overrides = dict(req.override_settings)
    field = "override_settings.CLIP_stop_at_last_layers"
    clip_skip = _to_int(d, "Clip skip", field)
    _set_or_drop(overrides, "CLIP_stop_at_last_layers", clip_skip if clip_skip != 1 else None)
    _set_or_drop(overrides, "randn_source", d["RNG"] if d["RNG"] != "GPU" else None)
    if "Model" in d:
        overrides["sd_model_checkpoint"] = str(d["Model"])
    if "VAE" in d:
        overrides["sd_vae"] = str(d["VAE"])
    emphasis = d.get("Emphasis")
    _set_or_drop(overrides, "emphasis", str(emphasis) if emphasis not in (None, "Original") else None)
    tome = d.get("Token merging ratio")  # A1111 writes it only when token merging was on
    tome = _to_number(d, "Token merging ratio", "override_settings.token_merging_ratio") if tome else None
    _set_or_drop(overrides, "token_merging_ratio", tome or None)
    changes["override_settings"] = overrides
    return req.copy(**changes)


def _set_or_drop(settings: dict[str, Any], key: str, value: object) -> None:
    """A default value is stated by leaving the override out, so the two spellings never differ."""
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value


def _exif_user_comment(exif_data: bytes) -> Optional[str]:
    try:
        exif = piexif.load(exif_data)
    except Exception:  # piexif raises many kinds of error on malformed data; that just means no comment
        return None
    raw = exif.get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    try:
        return piexif.helper.UserComment.load(raw)
    except ValueError:  # no charset prefix: A1111 falls back to reading it as UTF-8
        return raw.decode("utf8", errors="ignore") if isinstance(raw, bytes) else str(raw)


def read_image_infotext(image: Image.Image) -> tuple[Optional[str], dict[str, object]]:
    """(infotext, other metadata) of an opened image: PNG text chunk, EXIF UserComment, or GIF comment."""
    items: dict[str, object] = dict(image.info or {})
    text = items.pop("parameters", None)
    if "exif" in items:
        comment = _exif_user_comment(items["exif"])  # type: ignore[arg-type]
        if comment:
            text = comment
    elif "comment" in items:  # GIF
        comment_value = items["comment"]
        text = comment_value.decode("utf8", errors="ignore") if isinstance(comment_value, bytes) else str(comment_value)
    for key in _IGNORED_INFO_KEYS:
        items.pop(key, None)
    return (str(text) if text is not None else None), items
