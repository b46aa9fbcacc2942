"""A1111 txt2img/img2img bodies -> GenerationRequest, and finished jobs -> A1111 responses.

Everything a client can get wrong is checked here, before the job is queued, so a bad request is a 422 that
names its field instead of a failed job: sampler and schedule type, hires upscaler, checkpoint and VAE
overrides, images, scripts, then GenerationRequest.validate() for ranges.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from PIL import Image

from modules import infotext, samplers, upscaling
from modules.engine import VERSION, Engine
from modules.errors import ValidationError
from modules.jobs import Job
from modules.processing import LATENT_UPSCALE_MODES
from modules import builtin_scripts
from modules.request import MAX_SIDE, GenerationRequest, check_pixel_budget
from modules.settings import Settings

from . import files, images
from .models import GenerationBody, Img2ImgBody, Txt2ImgBody
from .service import JobMeta

# Read-only values GET /options adds; posting them back changes nothing.
READ_ONLY_OPTIONS = frozenset({"sd_checkpoint_hash"})


def scripts_for(kind: str, engine: Optional[Engine] = None) -> list[str]:
    """Titles (lower case, as A1111 lists them) of the selectable scripts for txt2img / img2img:
    the built-in ones, then the extensions'."""
    extension_titles = [t.lower() for t in engine.scripts.runner(kind == "img2img").titles] if engine else []
    return builtin_scripts.list_scripts()[kind] + extension_titles


def is_builtin_script(request: GenerationRequest) -> bool:
    return bool(request.script_name) and request.script_name.strip().lower() in builtin_scripts.list_scripts()[
        "img2img" if request.is_img2img else "txt2img"]


def _value(body: GenerationBody, name: str) -> Any:
    """The body's value, or the field's default when the client sent null."""
    value = getattr(body, name)
    if value is None:
        info = type(body).model_fields[name]
        value = info.get_default(call_default_factory=True)
    return value


def build_request(engine: Engine, body: GenerationBody, kind: str,
                  decode: Callable[[object, str], Image.Image] = images.decode_image,
                  max_pixels: int = images.DEFAULT_MAX_PIXELS) -> GenerationRequest:
    """The GenerationRequest for an A1111 body. Raises ValidationError naming the field."""
    v = lambda name: _value(body, name)  # noqa: E731
    sent = body.model_fields_set
    fields: dict[str, Any] = {
        "prompt": v("prompt") or "", "negative_prompt": v("negative_prompt") or "", "styles": list(v("styles") or []),
        "seed": v("seed"), "subseed": v("subseed"), "subseed_strength": v("subseed_strength"),
        "seed_resize_from_w": max(0, v("seed_resize_from_w") or 0),
        "seed_resize_from_h": max(0, v("seed_resize_from_h") or 0),
        "sampler_name": body.sampler_name or body.sampler_index or "Euler",
        "scheduler": body.scheduler or "Automatic",
        "steps": v("steps"), "cfg_scale": v("cfg_scale"), "width": v("width"), "height": v("height"),
        "batch_size": v("batch_size"), "n_iter": v("n_iter"), "denoising_strength": v("denoising_strength"),
        "override_settings": dict(v("override_settings") or {}),
        "script_name": body.script_name or None, "script_args": list(v("script_args") or []),
        "alwayson_scripts": dict(v("alwayson_scripts") or {}),
    }
    if not v("seed_enable_extras"):
        fields.update(subseed=-1, subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0)
    # A1111's API: save_images decides both, whatever do_not_save_* say.
    fields["do_not_save_samples"] = fields["do_not_save_grid"] = not v("save_images")
    if isinstance(body, Txt2ImgBody):
        fields.update(enable_hr=v("enable_hr"), hr_scale=v("hr_scale"), hr_upscaler=body.hr_upscaler or "Latent",
                      hr_second_pass_steps=v("hr_second_pass_steps"), hr_resize_x=v("hr_resize_x"),
                      hr_resize_y=v("hr_resize_y"))
    if isinstance(body, Img2ImgBody):
        blur = body.mask_blur if body.mask_blur is not None else v("mask_blur_x")
        fields.update(resize_mode=v("resize_mode"), mask_blur=blur, inpainting_fill=v("inpainting_fill"),
                      inpaint_full_res=v("inpaint_full_res"), inpaint_full_res_padding=v("inpaint_full_res_padding"),
                      inpainting_mask_invert=v("inpainting_mask_invert"))
        if not body.init_images:
            raise ValidationError("init_images", "img2img needs at least one init image")
        fields["init_images"] = [decode(data, f"init_images.{i}") for i, data in enumerate(body.init_images)]
        fields["mask"] = decode(body.mask, "mask") if body.mask else None

    # Legacy "DPM++ 2M Karras" and spellings such as "karras" become A1111's sampler + schedule label.
    fields["sampler_name"], fields["scheduler"] = infotext.split_sampler_name(str(fields["sampler_name"]),
                                                                              str(fields["scheduler"]))
    request = GenerationRequest(**fields)
    if body.infotext:
        request = _apply_infotext(engine, body.infotext, request, sent, fields)
    preflight(engine, request, kind, max_pixels)
    return request


# Body fields -> the request fields they set, for "explicit fields win over the infotext".
_FIELD_ALIASES = {"sampler_index": "sampler_name", "mask_blur_x": "mask_blur", "save_images": "do_not_save_samples"}


def _apply_infotext(engine: Engine, text: str, request: GenerationRequest, sent: set[str],
                    fields: dict[str, Any]) -> GenerationRequest:
    """A1111's `infotext` field: the infotext sets what the body left out."""
    if not isinstance(text, str):
        raise ValidationError("infotext", "must be a string")
    try:
        from_text = infotext.request_from_infotext(text, base=request)
    except ValidationError as e:
        raise ValidationError(f"infotext.{e.field}", e.reason) from None
    explicit = {_FIELD_ALIASES.get(name, name) for name in sent} & set(fields)
    changes = {name: fields[name] for name in explicit}
    overrides = dict(from_text.override_settings)
    # A model or VAE named by the infotext but not here is dropped, as A1111 drops an unknown override.
    for key, models in (("sd_model_checkpoint", engine.models.checkpoints), ("sd_vae", engine.models.vaes)):
        if key in overrides and key not in fields["override_settings"]:
            value = overrides[key]
            if not (key == "sd_vae" and value in ("Automatic", "None")) and models.find(str(value)) is None:
                del overrides[key]
    overrides.update(fields["override_settings"])
    changes["override_settings"] = overrides
    return from_text.copy(**changes)


def preflight(engine: Engine, request: GenerationRequest, kind: str,
              max_pixels: int = images.DEFAULT_MAX_PIXELS) -> None:
    """What the worker would refuse, refused now with the field named."""
    for name in ("sampler_name", "scheduler", "hr_upscaler", "prompt", "negative_prompt"):
        if not isinstance(getattr(request, name), str):
            raise ValidationError(name, "must be a string")
    samplers.resolve_sampler(request.sampler_name, request.scheduler)
    for name in ("seed_resize_from_w", "seed_resize_from_h"):  # noise is drawn at this size: bound it
        value = getattr(request, name)
        if not isinstance(value, int) or not 0 <= value <= MAX_SIDE:
            raise ValidationError(name, f"must be between 0 and {MAX_SIDE} (or -1 for off), got {value!r}")
    if request.enable_hr and kind == "txt2img" and request.hr_upscaler not in LATENT_UPSCALE_MODES:
        upscaling.get(request.hr_upscaler, "hr_upscaler")
    if request.script_name:
        titles = scripts_for(kind, engine)
        if request.script_name.lower() not in (t.lower() for t in titles):
            raise ValidationError("script_name", f"script {request.script_name!r} not found; available: "
                                                 f"{', '.join(titles) or 'none'}")
    # Extension scripts check their own arguments (unknown always-on names, too many args).
    engine.scripts.runner(kind == "img2img").validate(
        request.copy(script_name=None, script_args=[]) if is_builtin_script(request) else request)
    check_overrides(engine, request.override_settings, "override_settings.")
    request.validate()
    check_pixel_budget(request, max_pixels)


def check_overrides(engine: Engine, overrides: dict[str, Any], prefix: str = "") -> None:
    """Settings values a client sends (override_settings, POST /options): types, ranges, model names."""
    scratch = Settings()
    for name, value in overrides.items():
        if name in READ_ONLY_OPTIONS:
            continue
        try:
            scratch.set(name, value, save=False)
        except ValidationError as e:
            raise ValidationError(prefix + name, e.reason) from None
    for name in OUTPUT_FOLDER_OPTIONS & set(overrides):
        check_output_folder(engine, overrides[name], prefix + name)
    if overrides.get("sd_model_checkpoint"):  # "" or null: keep the current one
        find_checkpoint(engine, overrides["sd_model_checkpoint"], prefix + "sd_model_checkpoint")
    vae = overrides.get("sd_vae")
    if vae not in (None, "Automatic", "None"):
        if engine.models.vaes.find(str(vae)) is None:
            engine.models.vaes.refresh()
        try:
            engine.models.vaes.resolve(str(vae))
        except ValidationError as e:
            raise ValidationError(prefix + "sd_vae", e.reason) from None


# Settings that name a folder Atelier writes into (and then serves files from: files.allowed_roots).
OUTPUT_FOLDER_OPTIONS = frozenset({"outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples"})


def check_output_folder(engine: Engine, value: Any, field_name: str) -> None:
    """An output folder set over HTTP must lie inside the data folder (resolved as the saver will resolve it,
    symlinks included): a client must not make Atelier write, then serve, files anywhere else. Folders elsewhere
    are set by the artist in Settings or config.json."""
    if value in (None, "") or value == engine.settings.get(field_name.rsplit(".", 1)[-1]):
        return  # unchanged: clients post back the whole of GET /options, folders set in Settings included
    if not isinstance(value, str):
        raise ValidationError(field_name, f"must be a folder path, got {value!r}")
    problem = files.path_text_problem(value)
    if problem:
        raise ValidationError(field_name, problem)
    real = Path(os.path.realpath(value))
    roots = [Path(os.path.realpath(engine.paths.data_dir)), Path(os.path.realpath(engine.paths.outputs_dir))]
    if not files.is_inside(real, roots):
        raise ValidationError(field_name, f"through the API an output folder must lie inside {roots[0]}; "
                                          "set other folders in Settings")


def find_checkpoint(engine: Engine, name: Any, field_name: str = "sd_model_checkpoint"):
    """The checkpoint for a name or title, rescanning the folder once before giving up (A1111 does too)."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(field_name, f"must be a checkpoint name, got {name!r}")
    checkpoints = engine.models.checkpoints
    found = checkpoints.find(name)
    if found is None:
        checkpoints.refresh()
        found = checkpoints.find(name)
    if found is None:
        names = ", ".join(item.title for item in checkpoints.items) or f"none; put files in {checkpoints.folder}"
        raise ValidationError(field_name, f"unknown checkpoint {name!r}; available: {names}")
    return found


def with_settings_checkpoint(engine: Engine, request: GenerationRequest) -> GenerationRequest:
    """The engine loads request.checkpoint, else keeps whatever is loaded; so a checkpoint chosen in settings
    (POST /options) is passed on explicitly, and the next API job switches to it in queue order."""
    if request.checkpoint:
        return request
    wanted = engine.settings.get("sd_model_checkpoint")
    if not wanted or engine.models.checkpoints.find(str(wanted)) is None:
        return request
    return request.copy(override_settings={**request.override_settings, "sd_model_checkpoint": wanted})


def make_meta(source: str, kind: str, body: GenerationBody, webhook: Optional[str] = None) -> JobMeta:
    parameters = body.model_dump(exclude={"webhook"})
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        parameters["init_images"], parameters["mask"] = None, None
    return JobMeta(source=source, kind=kind, parameters=parameters, send_images=bool(_value(body, "send_images")),
                   overrides=dict(body.override_settings or {}),
                   restore_afterwards=_value(body, "override_settings_restore_afterwards") is not False,
                   webhook=webhook)


# -- responses ------------------------------------------------------------------------------------
def output_images(engine: Engine, job: Job) -> tuple[list[Image.Image], list[str], int]:
    """(images, infotexts, index_of_first_image): A1111 puts the grid first when it made one, which its API
    does only when the request saves grids (return_grid on, save_images true, two images or more)."""
    output = job.result
    pictures = list(getattr(output, "images", None) or [])
    texts = list(getattr(output, "infotexts", None) or [])
    grid = getattr(output, "grid", None)
    request = job.request
    if grid is not None and len(pictures) >= 2 and not request.do_not_save_grid \
            and engine.option(request, "return_grid"):
        return [grid, *pictures], [texts[0] if texts else "", *texts], 1
    return pictures, texts, 0


def encode_outputs(engine: Engine, job: Job, pictures: list[Image.Image], texts: list[str]) -> list[str]:
    fmt = str(engine.option(job.request, "samples_format") or "png")
    # Images past the infotexts are a script's extras (JobOutput): sent too, with no infotext, as A1111 does.
    texts = [*texts, *[None] * (len(pictures) - len(texts))]
    return [images.encode_image(picture, fmt, text) for picture, text in zip(pictures, texts)]


def info_dict(engine: Engine, job: Job, texts: list[str], index_of_first_image: int) -> dict[str, Any]:
    """Processed.js() of A1111: what `info` holds, as a dict."""
    request = job.request
    result = getattr(job.result, "result", None)
    seeds = list(getattr(result, "seeds", None) or [])
    subseeds = list(getattr(result, "subseeds", None) or [])
    prompts = list(getattr(result, "prompts", None) or []) or [request.prompt]
    negatives = list(getattr(result, "negative_prompts", None) or []) or [request.negative_prompt]
    parsed = infotext.parse_infotext(texts[index_of_first_image]) if len(texts) > index_of_first_image else {}
    model = engine.models.current
    current = engine.models.current_file
    inpainting = bool(model is not None and current is not None and parsed.get("Model") == current.model_name
                      and model.family.inpainting)
    started = datetime.datetime.fromtimestamp(job.started or job.created)
    return {
        "prompt": prompts[0], "all_prompts": prompts,
        "negative_prompt": negatives[0], "all_negative_prompts": negatives,
        "seed": seeds[0] if seeds else request.seed, "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.subseed, "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength,
        "width": request.width, "height": request.height,
        "sampler_name": request.sampler_name, "scheduler": request.scheduler,
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": parsed.get("Model"), "sd_model_hash": parsed.get("Model hash"),
        "sd_vae_name": parsed.get("VAE"), "sd_vae_hash": parsed.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w, "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": infotext.generation_extras(request),
        "index_of_first_image": index_of_first_image,
        "infotexts": texts, "styles": list(request.styles),
        "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": inpainting,
        "version": VERSION,
    }


def script_response(result: "builtin_scripts.ScriptResult", meta: JobMeta, fmt: str) -> dict[str, Any]:
    """A selectable script's output in the same shape as a plain generation's."""
    encoded = [images.encode_image(im, fmt, text) for im, text in zip(result.images, result.infotexts)]
    info = {"infotexts": result.infotexts, "seed": result.seed, "errors": result.errors,
            "interrupted": result.interrupted}
    return {"images": encoded if meta.send_images else [], "parameters": meta.parameters, "info": json.dumps(info)}


def a1111_response(engine: Engine, job: Job, meta: Optional[JobMeta]) -> dict[str, Any]:
    """The /sdapi/v1 txt2img/img2img body: images (base64, infotext inside), parameters, info (JSON string)."""
    pictures, texts, first = output_images(engine, job)
    send = meta.send_images if meta else True
    encoded = encode_outputs(engine, job, pictures, texts) if send else []
    info = info_dict(engine, job, texts, first)
    return {"images": encoded, "parameters": meta.parameters if meta else {},
            "info": json.dumps(info, default=lambda o: None)}
