"""/sdapi/v1: AUTOMATIC1111's HTTP API, route for route, so existing clients work unchanged.

Generation goes through the engine's queue like everything else; a route waits for its job without holding a
thread. Routes that touch files or models are plain `def`, so FastAPI runs them in its thread pool.
"""
from __future__ import annotations

import datetime
import os
import time
from typing import Any, Optional

from fastapi import Body, Depends
from fastapi.concurrency import run_in_threadpool

from modules import builtin_scripts, infotext, samplers, upscaling
from modules.errors import ValidationError
from modules.jobs import Job, JobState
from modules.processing import LATENT_UPSCALE_MODES

from . import images, lists
from .errors import ApiError
from .routes import Routes
from .generation import (READ_ONLY_OPTIONS, a1111_response, build_request, check_overrides, is_builtin_script,
                         make_meta, script_response, scripts_for, with_settings_checkpoint)
from .models import (ExtrasBatchImagesBody, ExtrasBatchImagesResponse, ExtrasBody, ExtrasSingleImageBody,
                     ExtrasSingleImageResponse, GenerationBody, GenerationResponse, Img2ImgBody, MemoryResponse,
                     PNGInfoBody, PNGInfoResponse, ProgressResponse, SamplerItem, SchedulerItem, ScriptsList,
                     SDModelItem, SDVaeItem, Txt2ImgBody, UpscalerItem)
from .service import ApiService

MAX_EXTRAS_SIDE = images.MAX_INPUT_SIDE
MAX_EXTRAS_PIXELS = 2 * images.MAX_INPUT_PIXELS


def finished_job_error(job: Job) -> Optional[ApiError]:
    """A1111 answers an interrupted job with what it finished; failures and cancellations are errors."""
    if job.state is JobState.failed:
        return ApiError(500, job.error or "generation failed", error="GenerationError", job_id=job.id)
    if job.state is JobState.cancelled:
        return ApiError(409, "the job was cancelled before it started", error="Cancelled", job_id=job.id)
    return None


def register(app, service: ApiService) -> None:
    router = Routes(app, "/sdapi/v1", ["sdapi (A1111 compatible)"])
    submission = Depends(service.limits.submission)  # --api-rate-limit; names the client for the queue limit
    _register_generation(router, service, submission)
    _register_extras(router, service, submission)
    _register_job_control(router, service)
    _register_settings(router, service)
    _register_lists(router, service)
    _register_maintenance(router, service)


def _register_generation(router: Routes, service: ApiService, submission: Any) -> None:
    @router.post("/txt2img", response_model=GenerationResponse)
    async def txt2img(body: Txt2ImgBody, client: str = submission) -> dict[str, Any]:
        return await _generate(service, body, "txt2img", client)

    @router.post("/img2img", response_model=GenerationResponse)
    async def img2img(body: Img2ImgBody, client: str = submission) -> dict[str, Any]:
        return await _generate(service, body, "img2img", client)


async def _generate(service: ApiService, body: GenerationBody, kind: str, client: str) -> dict[str, Any]:
    engine = service.engine
    request = await run_in_threadpool(build_request, engine, body, kind, service.decode, service.max_pixels)
    request = with_settings_checkpoint(engine, request)
    if is_builtin_script(request):  # built-in scripts queue their own jobs, so they run here, not on the worker
        with service.limits.running(client):
            result = await run_in_threadpool(builtin_scripts.run_script, engine, request)
        return script_response(result, make_meta("sdapi", kind, body), "png")
    meta = make_meta("sdapi", kind, body)
    meta.client = client
    job = service.submit(request, meta)
    await service.wait(job)
    error = finished_job_error(job)
    if error is not None:
        raise error
    return await run_in_threadpool(a1111_response, engine, job, service.meta(job.id))


def _register_extras(router: Routes, service: ApiService, submission: Any) -> None:
    """Extras, png info and interrogate."""
    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(body: ExtrasSingleImageBody, client: str = submission) -> dict[str, Any]:
        image = service.decode(body.image, "image")
        with service.limits.running(client):  # extras run in the request, not the queue: one job while they do
            result, info = _run_extras(service, image, body)
        return {"html_info": info, "image": result if body.show_extras_results else None}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(body: ExtrasBatchImagesBody, client: str = submission) -> dict[str, Any]:
        sources = [service.decode(item.data, f"imageList.{i}.data") for i, item in enumerate(body.imageList)]
        results, info = [], ""
        with service.limits.running(client):
            for image in sources:
                encoded, info = _run_extras(service, image, body)
                results.append(encoded)
        return {"html_info": info, "images": results if body.show_extras_results else []}

    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(body: PNGInfoBody) -> dict[str, Any]:
        image = service.decode(body.image, "image")
        text, items = infotext.read_image_infotext(image)
        text = text or ""
        return {"info": text, "items": {str(k): _json_safe(v) for k, v in items.items()},
                "parameters": {k: _json_safe(v) for k, v in infotext.parse_infotext(text).items()}}

    @router.post("/interrogate")
    def interrogate() -> None:
        raise ApiError(501, "no interrogator (CLIP / DeepDanbooru) is available in Atelier yet",
                       error="NotImplemented")


def _run_extras(service: ApiService, image, body: ExtrasBody) -> tuple[str, str]:
    w, h = upscaling.target_size(image, body.resize_mode, body.upscaling_resize, body.upscaling_resize_w,
                                 body.upscaling_resize_h)
    if w > MAX_EXTRAS_SIDE or h > MAX_EXTRAS_SIDE or w * h > MAX_EXTRAS_PIXELS:
        field = "upscaling_resize" if body.resize_mode == 0 else "upscaling_resize_w"
        raise ValidationError(field, f"the result would be {w}x{h}; at most {MAX_EXTRAS_SIDE} a side")
    text, _ = infotext.read_image_infotext(image)
    with service.extras_lock:
        result, info = upscaling.run_extras(
            image, resize_mode=body.resize_mode, upscaling_resize=body.upscaling_resize,
            upscaling_resize_w=body.upscaling_resize_w, upscaling_resize_h=body.upscaling_resize_h,
            upscaling_crop=body.upscaling_crop, upscaler_1=body.upscaler_1, upscaler_2=body.upscaler_2,
            extras_upscaler_2_visibility=body.extras_upscaler_2_visibility)
    extra = {"postprocessing": info} if info else None
    return images.encode_image(result, str(service.engine.settings.get("samples_format")), text, extra), info


def _register_job_control(router: Routes, service: ApiService) -> None:
    engine = service.engine

    @router.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        return progress_view(service, skip_current_image)

    @router.post("/interrupt")
    def interrupt() -> dict:
        engine.queue.interrupt()
        return {}

    @router.post("/skip")
    def skip() -> None:
        engine.queue.skip()


def _register_settings(router: Routes, service: ApiService) -> None:
    engine = service.engine

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return options_view(service)

    @router.post("/options")
    def set_options(body: dict[str, Any] = Body(...)) -> None:
        changes = {k: v for k, v in body.items() if k not in READ_ONLY_OPTIONS}
        check_overrides(engine, changes)
        engine.settings.update(changes)
        if "show_progress_every_n_steps" in changes:
            engine.queue.preview_every = int(engine.settings.get("show_progress_every_n_steps"))

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        flags = dict(vars(service.args))
        if flags.get("api_auth"):
            flags["api_auth"] = "<hidden>"
        return {k: _json_safe(v) for k, v in flags.items()}


def _register_lists(router: Routes, service: ApiService) -> None:
    engine = service.engine

    @router.get("/samplers", response_model=list[SamplerItem])
    def get_samplers() -> list[dict]:
        return samplers.sampler_list_for_api()

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def get_schedulers() -> list[dict]:
        return samplers.scheduler_list_for_api()

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def get_upscalers() -> list[dict]:
        return upscaling.list_upscalers()

    @router.get("/latent-upscale-modes")
    def get_latent_upscale_modes() -> list[dict]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/sd-models", response_model=list[SDModelItem])
    def get_sd_models() -> list[dict]:
        return [sd_model_item(engine, item) for item in engine.models.checkpoints.items]

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def get_sd_vae() -> list[dict]:
        return [{"model_name": item.name, "filename": str(item.path)} for item in engine.models.vaes.items]

    @router.get("/scripts", response_model=ScriptsList)
    def get_scripts() -> dict[str, list[str]]:
        return {"txt2img": scripts_for("txt2img", engine), "img2img": scripts_for("img2img", engine)}

    for name in lists.EMPTY:
        router.add_api_route(f"/{name}", _list_route(name, engine), methods=["GET"], name=f"get_{name}")


def _register_maintenance(router: Routes, service: ApiService) -> None:
    engine = service.engine

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        engine.models.checkpoints.refresh()

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        engine.models.vaes.refresh()

    for name in lists.REFRESHABLE:
        router.add_api_route(f"/refresh-{name}", _refresh_route(name, engine), methods=["POST"],
                             name=f"refresh_{name}")

    @router.post("/unload-checkpoint")
    def unload_checkpoint() -> dict:
        engine.models.unload()  # a running job keeps its own reference until it ends
        return {}

    @router.post("/reload-checkpoint")
    def reload_checkpoint() -> dict:
        if engine.models.current is None:  # never swap under a running job: only load when nothing is
            wanted = engine.settings.get("sd_model_checkpoint")
            engine.models.get(str(wanted) if wanted else None)
        return {}

    @router.get("/memory", response_model=MemoryResponse)
    def memory() -> dict[str, Any]:
        return memory_view()


def _list_route(name: str, engine):
    def route() -> Any:
        return lists.get(name, engine)

    return route


def _refresh_route(name: str, engine):
    def route() -> None:
        lists.refresh(name, engine)

    return route


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def sd_model_item(engine, item) -> dict[str, Any]:
    sha = engine.models.hashes.cached(item.path, f"{item.kind}/{item.name}")
    config = None
    for candidate in (item.path.with_suffix(".yaml"), item.path.with_name(item.path.stem + ".config.json")):
        if candidate.exists():
            config = str(candidate)
            break
    return {"title": item.title, "model_name": item.model_name, "hash": sha[:10] if sha else None, "sha256": sha,
            "filename": str(item.path), "config": config}


def options_view(service: ApiService) -> dict[str, Any]:
    engine = service.engine
    values = engine.settings.all()
    current = engine.models.current_file or engine.models.default_checkpoint()
    if not values.get("sd_model_checkpoint") and current is not None:
        values["sd_model_checkpoint"] = current.title
    sha = engine.models.hashes.cached(current.path, f"{current.kind}/{current.name}") if current else None
    values["sd_checkpoint_hash"] = sha
    return values


def progress_view(service: ApiService, skip_current_image: bool = False) -> dict[str, Any]:
    """A1111's /progress over our queue: state describes the running job; job_count is its batch count."""
    queue = service.engine.queue
    job = queue.current()
    queued = sum(1 for j in queue.list() if j.state is JobState.queued)
    textinfo = f"In queue: {queued}" if queued else None
    state: dict[str, Any] = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                             "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
                             "sampling_steps": 0, "queued": queued}
    if job is None:
        state["job_count"] = queued  # work is waiting: clients that poll until job_count == 0 keep waiting
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": textinfo}
    n_iter = max(1, job.request.n_iter)
    per_batch = max(1, (job.total_steps or 1) // n_iter)
    job_no = min(job.step // per_batch, n_iter - 1)
    started = job.started or job.created
    state.update(job=job.kind if n_iter == 1 else f"Batch {job_no + 1} out of {n_iter}", job_count=n_iter,
                 job_no=job_no, sampling_step=job.step - job_no * per_batch, sampling_steps=per_batch,
                 interrupted=job.control.interrupted, job_id=job.id,
                 job_timestamp=datetime.datetime.fromtimestamp(started).strftime("%Y%m%d%H%M%S"))
    progress = min(1.0, max(0.0, job.progress))
    eta = job.eta_seconds
    if eta is None:
        elapsed = max(0.0, time.time() - started)
        eta = elapsed / progress - elapsed if progress > 0 else 0.0
    current = None if skip_current_image else service.preview_b64(job)
    return {"progress": progress, "eta_relative": float(eta), "state": state, "current_image": current,
            "textinfo": textinfo}


def memory_view() -> dict[str, Any]:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        vm = psutil.virtual_memory()
        rss = process.memory_info().rss
        ram = {"free": vm.available, "used": rss, "total": vm.total}
    except Exception as e:  # psutil missing or the platform refuses
        ram = {"error": str(e)}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            s = dict(torch.cuda.memory_stats())
            pair = lambda key: {"current": s.get(f"{key}.current", 0), "peak": s.get(f"{key}.peak", 0)}  # noqa: E731
            cuda = {"system": {"free": free, "used": total - free, "total": total},
                    "active": pair("active_bytes.all"), "allocated": pair("allocated_bytes.all"),
                    "reserved": pair("reserved_bytes.all"), "inactive": pair("inactive_split_bytes.all"),
                    "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
        else:
            cuda = {"error": "unavailable"}
    except Exception as e:
        cuda = {"error": str(e)}
    return {"ram": ram, "cuda": cuda}

