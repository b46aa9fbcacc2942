"""/atelier/v1: our own job API for batch work. Submit and get a job id at once; poll a job or follow events
(SSE); fetch the result; cancel what is queued; expand one request into many jobs; get a webhook call when a
job ends. See docs/api.md for curl examples.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import ValidationError as PydanticValidationError

from modules.errors import ValidationError
from modules.jobs import TERMINAL_EVENTS, Job, JobState
from modules.request import GenerationRequest

from .errors import ApiError, field_from_loc
from .routes import Routes
from .generation import (build_request, encode_outputs, info_dict, make_meta, output_images,
                         with_settings_checkpoint)
from .models import AtelierImg2ImgBody, AtelierTxt2ImgBody, BatchBody, GenerationBody, JobOptions
from .service import ApiService, JobMeta

MAX_BATCH_JOBS = 1000
KEEPALIVE_SECONDS = 10.0
POLL_SECONDS = 0.05
MAX_WAIT_SECONDS = 600.0


def register(app, service: ApiService) -> None:
    router = Routes(app, "/atelier/v1", ["atelier jobs"])
    submission = Depends(service.limits.submission)  # --api-rate-limit; names the client for the queue limit
    _register_submission(router, service, submission)
    _register_job_queries(router, service)
    _register_job_control(router, service)
    _register_events(router, service)


def _register_submission(router: Routes, service: ApiService, submission: Any) -> None:
    @router.post("/txt2img", status_code=202, summary="Queue a txt2img job; answers with its id at once")
    def submit_txt2img(body: AtelierTxt2ImgBody, client: str = submission) -> JSONResponse:
        return _accepted(service, _submit(service, body, "txt2img", client))

    @router.post("/img2img", status_code=202, summary="Queue an img2img (or inpaint) job")
    def submit_img2img(body: AtelierImg2ImgBody, client: str = submission) -> JSONResponse:
        return _accepted(service, _submit(service, body, "img2img", client))

    @router.post("/batch", status_code=202, summary="One job per combination of the `expand` lists")
    def submit_batch(body: BatchBody, client: str = submission) -> JSONResponse:
        kind, prepared = _prepare_batch(service, body)
        jobs = service.submit_all(prepared, client)
        return JSONResponse(status_code=202, content={"count": len(jobs), "kind": kind,
                                                      "ids": [job.id for job in jobs]})


def _submit(service: ApiService, body: GenerationBody, kind: str, client: str) -> Job:
    engine = service.engine
    webhook = service.check_webhook(body.webhook if isinstance(body, JobOptions) else None)
    request = with_settings_checkpoint(engine, build_request(engine, body, kind, service.decode,
                                                             service.max_pixels))
    meta = make_meta("atelier", kind, body, webhook)
    meta.client = client
    return service.submit(request, meta)


def _accepted(service: ApiService, job: Job) -> JSONResponse:
    return JSONResponse(status_code=202, content=service.summary(job))


def _prepare_batch(service: ApiService, body: BatchBody) -> tuple[str, list[tuple[GenerationRequest, JobMeta]]]:
    """The batch's kind and a (request, meta) per job. Every job is checked before any is queued: all or nothing."""
    engine = service.engine
    kind, bodies = expand_batch(body)
    decode_once = _shared_decoder(service)
    webhook = service.check_webhook(body.webhook) or service.check_webhook(body.base.get("webhook"),
                                                                           "base.webhook")
    prepared = []
    for i, one in enumerate(bodies):
        try:
            request = with_settings_checkpoint(engine, build_request(engine, one, kind, decode_once,
                                                                     service.max_pixels))
        except ValidationError as e:
            field = e.field if e.field.startswith(("base.", "expand.")) else _batch_field(e.field, body)
            raise ValidationError(field, f"{e.reason} (job {i + 1} of {len(bodies)})") from None
        prepared.append((request, make_meta("atelier", kind, one, webhook)))
    return kind, prepared


def _shared_decoder(service: ApiService) -> Callable[[object, str], Image.Image]:
    """A decoder for a batch's jobs: one decode for every job sharing an image; errors name the `base` field."""
    cache: dict[str, Image.Image] = {}

    def decode_once(data: object, field: str) -> Image.Image:
        if isinstance(data, str) and data in cache:
            return cache[data]
        try:
            image = service.decode(data, field)
        except ValidationError as e:
            raise ValidationError(f"base.{e.field}", e.reason) from None
        if isinstance(data, str):
            cache[data] = image
        return image

    return decode_once


def _register_job_queries(router: Routes, service: ApiService) -> None:
    queue = service.engine.queue

    @router.get("/jobs", summary="Jobs the queue knows, oldest first")
    def list_jobs(state: Optional[str] = Query(None, description="queued, running, done, failed, interrupted, "
                                                                 "cancelled"),
                  limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
        if state is not None and state not in JobState.__members__:
            raise ValidationError("state", f"must be one of {', '.join(JobState.__members__)}")
        jobs = [job for job in queue.list() if state is None or job.state.value == state]
        current = queue.current()
        return {"jobs": [service.summary(job) for job in jobs[-limit:]],
                "running": current.id if current is not None else None,
                "queued": sum(1 for job in queue.list() if job.state is JobState.queued)}

    @router.get("/jobs/{job_id}", summary="A job's state and progress; preview=true adds the live preview")
    def job_status(job_id: str, preview: bool = False) -> dict[str, Any]:
        job = service.get_job(job_id)
        out = service.summary(job)
        if preview:
            out["preview"] = service.preview_b64(job)
        return out

    @router.get("/jobs/{job_id}/result", summary="Images (base64), infotexts and info of a finished job")
    async def job_result(job_id: str, wait: float = Query(0, ge=0, le=MAX_WAIT_SECONDS,
                                                          description="seconds to wait for the job to end"),
                         images_too: bool = Query(True, alias="images")) -> dict[str, Any]:
        job = service.get_job(job_id)
        if wait and not job.is_finished:
            await service.wait(job, wait)
        if not job.is_finished:
            raise ApiError(409, f"job is {job.state.value}; ask again when it has ended (or pass ?wait=seconds)",
                           error="NotFinished", state=job.state.value, id=job.id)
        return await run_in_threadpool(_result_view, service, job, images_too)


def _result_view(service: ApiService, job: Job, with_images: bool) -> dict[str, Any]:
    engine = service.engine
    pictures, texts, first = output_images(engine, job)
    meta = service.meta(job.id)
    out = service.summary(job)
    out.update(images=encode_outputs(engine, job, pictures, texts) if with_images else [], infotexts=texts,
               info=info_dict(engine, job, texts, first), parameters=meta.parameters if meta else {})
    return out


def _register_job_control(router: Routes, service: ApiService) -> None:
    @router.post("/jobs/{job_id}/cancel", summary="Cancel a queued job")
    def cancel_job(job_id: str) -> dict[str, Any]:
        return _control(service, job_id, "cancel")

    @router.delete("/jobs/{job_id}", summary="Cancel a queued job (same as POST .../cancel)")
    def delete_job(job_id: str) -> dict[str, Any]:
        return _control(service, job_id, "cancel")

    @router.post("/jobs/{job_id}/interrupt", summary="Stop a running job, keeping finished images")
    def interrupt_job(job_id: str) -> dict[str, Any]:
        return _control(service, job_id, "interrupt")

    @router.post("/jobs/{job_id}/skip", summary="Skip the running job's current batch")
    def skip_job(job_id: str) -> dict[str, Any]:
        return _control(service, job_id, "skip")


def _control(service: ApiService, job_id: str, action: str) -> dict[str, Any]:
    queue = service.engine.queue
    job = service.get_job(job_id)
    if action == "cancel":
        done = queue.cancel(job.id)
        reason = "only a queued job can be cancelled; interrupt a running one"
    elif action == "interrupt":
        done = queue.interrupt(job.id)
        reason = "the job has already ended"
    else:
        done = queue.skip(job.id)
        reason = "only a running job can skip"
    if not done:
        raise ApiError(409, f"{reason} (it is {job.state.value})", error="Conflict", state=job.state.value,
                       id=job.id)
    return service.summary(job)


def _register_events(router: Routes, service: ApiService) -> None:
    @router.get("/events", summary="Server-sent events for every job: queued, started, progress, done, ...")
    async def events() -> StreamingResponse:
        return _sse(event_stream(service, None))

    @router.get("/jobs/{job_id}/events", summary="Server-sent events for one job; the stream ends with it")
    async def job_events(job_id: str) -> StreamingResponse:
        service.get_job(job_id)  # 404 before the stream starts
        return _sse(event_stream(service, job_id))


def expand_batch(body: BatchBody) -> tuple[str, list[GenerationBody]]:
    """The bodies for a batch: `base` with each combination of the `expand` values, in order."""
    kind = body.type or ("img2img" if body.base.get("init_images") else "txt2img")
    model = AtelierImg2ImgBody if kind == "img2img" else AtelierTxt2ImgBody
    for key, values in body.expand.items():
        if key not in model.model_fields or key in ("webhook", "infotext"):
            raise ValidationError(f"expand.{key}", f"not a {kind} field that can be expanded")
        if not values:
            raise ValidationError(f"expand.{key}", "needs at least one value")
    total = math.prod(len(values) for values in body.expand.values())
    if total > MAX_BATCH_JOBS:
        raise ValidationError("expand", f"makes {total} jobs; at most {MAX_BATCH_JOBS} per batch")
    keys = list(body.expand)
    bodies: list[GenerationBody] = []
    for combination in itertools.product(*(body.expand[key] for key in keys)):
        data = {**body.base, **dict(zip(keys, combination))}
        try:
            bodies.append(model.model_validate(data))
        except PydanticValidationError as e:
            error = e.errors()[0]
            name = field_from_loc(("body", *error.get("loc", ())))
            top = name.split(".")[0]
            raise ValidationError(f"expand.{name}" if top in keys else f"base.{name}", error.get("msg", "invalid"))
    return kind, bodies


def _batch_field(field: str, body: BatchBody) -> str:
    top = field.split(".")[0]
    return f"expand.{field}" if top in body.expand else f"base.{field}"


def _sse(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def format_event(event: dict[str, Any]) -> str:
    seq = event.get("seq")
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"


async def event_stream(service: ApiService, job_id: Optional[str]) -> AsyncIterator[str]:
    """Queue events as SSE, in the order they happened. Progress events carry the preview (base64 PNG) when
    one was built at that step. A per-job stream starts with the job's state and ends after its last event."""
    queue = service.engine.queue
    subscription = queue.subscribe(maxsize=1024)
    try:
        if job_id is not None:
            job = queue.get(job_id)
            if job is None:
                return
            yield format_event({"type": "state", "job_id": job.id, "seq": None, **service.summary(job)})
            if job.is_finished:  # it ended before we subscribed: its last event won't come again
                yield format_event(_terminal(job))
                return
        else:
            yield ": connected\n\n"
        last_sent = time.monotonic()
        while True:
            batch = subscription.drain()
            for event in batch:
                if job_id is not None and event["job_id"] != job_id:
                    continue
                yield format_event(await _enrich(service, event))
                last_sent = time.monotonic()
                if job_id is not None and event["type"] in TERMINAL_EVENTS:
                    return
            if subscription.overflowed:
                yield format_event({"type": "overflow", "seq": None, "detail": "this listener fell too far behind; "
                                                                               "reconnect and re-read job states"})
                return
            if not batch:
                if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                    yield ": keepalive\n\n"  # also how a vanished client is noticed
                    last_sent = time.monotonic()
                await asyncio.sleep(POLL_SECONDS)
    finally:
        queue.unsubscribe(subscription)


def _terminal(job: Job) -> dict[str, Any]:
    event = {"type": job.state.value, "job_id": job.id, "seq": None, "time": job.finished,
             "result_url": f"/atelier/v1/jobs/{job.id}/result"}
    if job.error:
        event["error"] = job.error
    return event


async def _enrich(service: ApiService, event: dict[str, Any]) -> dict[str, Any]:
    event = dict(event)
    if event["type"] == "progress":
        built = event.get("preview")
        event["preview"] = None
        if built:
            job = service.engine.queue.get(event["job_id"])
            event["preview"] = await run_in_threadpool(service.preview_b64, job)
    elif event["type"] in TERMINAL_EVENTS:
        event["result_url"] = f"/atelier/v1/jobs/{event['job_id']}/result"
    return event
