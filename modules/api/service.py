"""The API's side of the job queue: submit, wait without blocking the event loop, per-job API metadata,
webhooks, and previews encoded once however many clients ask.

Every API generation is an ordinary engine job, so /sdapi/v1, /atelier/v1 and the UI share one FIFO queue.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from modules import image_input
from modules.engine import Engine
from modules.errors import ValidationError
from modules.jobs import Job, JobState
from modules.request import GenerationRequest
from modules.settings import OPTIONS

from . import images
from .client_limits import ClientLimits
from .webhook_policy import WebhookPolicy, WebhookRefused, post_json

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0
MAX_META = 1000  # the queue itself remembers 500 finished jobs


@dataclass
class JobMeta:
    """What the API needs to answer for a job beyond what the queue keeps."""

    source: str  # "sdapi" or "atelier"
    kind: str  # "txt2img" or "img2img"
    parameters: dict[str, Any]  # the request as sent (A1111's `parameters`)
    send_images: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # override_settings as the client sent them
    restore_afterwards: bool = True
    webhook: Optional[str] = None
    webhook_status: Optional[str] = None  # "sent 200", "failed: ...", "refused: ...", None until called
    client: Optional[str] = None  # who submitted it, for --max-queued-per-client (client_limits.py)


class ApiService:
    def __init__(self, engine: Engine, args: Any):
        self.engine, self.args = engine, args
        self._lock = threading.Lock()
        self._meta: "OrderedDict[str, JobMeta]" = OrderedDict()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._preview: tuple[Optional[str], int, Optional[str]] = (None, -1, None)  # job id, step, base64
        # Extras (upscalers) run outside the job queue, which takes only generations; one at a time at least.
        self.extras_lock = threading.Lock()
        self.webhooks = WebhookPolicy.from_args(args)  # --webhook-allow, --listen
        self.limits = ClientLimits.from_args(args)  # --max-queued-per-client, --api-rate-limit
        pixels = getattr(args, "max_pixels", None)
        self.max_pixels = images.DEFAULT_MAX_PIXELS if pixels is None else int(pixels)  # --max-pixels; <= 0: off
        image_input.set_max_pixels(self.max_pixels)  # extensions decode through api.decode_image with it too

    def decode(self, data: object, field: str):
        """A client's base64 image, within --max-pixels (images.decode_image). Raises ValidationError(field)."""
        return images.decode_image(data, field, self.max_pixels if self.max_pixels > 0 else 2**62)

    # -- jobs -------------------------------------------------------------------------------------
    def check_webhook(self, url: Optional[str], field_name: str = "webhook") -> Optional[str]:
        """The webhook URL if the policy lets it be called; ValidationError(field_name) saying why not."""
        return self.webhooks.check(url, field_name)

    def submit(self, request: GenerationRequest, meta: JobMeta, reserved: bool = False) -> Job:
        """Validate and queue. Raises ValidationError before anything is queued, and TooManyRequests (429)
        when meta.client already has --max-queued-per-client jobs waiting or running (unless `reserved`)."""
        if meta.client is not None and not reserved:
            self.limits.reserve(meta.client)
        try:
            job = self.engine.submit(request, kind=meta.kind, on_finished=self._on_finished)
        except BaseException:
            if meta.client is not None:
                self.limits.release(meta.client)
            raise
        with self._lock:
            self._meta[job.id] = meta
            while len(self._meta) > MAX_META:
                self._meta.popitem(last=False)
        return job

    def submit_all(self, prepared: list[tuple[GenerationRequest, JobMeta]], client: str) -> list[Job]:
        """Queue a batch for one client, counted all at once: a batch over the limit queues nothing."""
        self.limits.reserve(client, len(prepared))
        jobs: list[Job] = []
        try:
            for request, meta in prepared:
                meta.client = client
                jobs.append(self.submit(request, meta, reserved=True))
        except BaseException:
            self.limits.release(client, len(prepared) - len(jobs) - 1)  # submit released the failed one
            raise
        return jobs

    def meta(self, job_id: str) -> Optional[JobMeta]:
        with self._lock:
            return self._meta.get(job_id)

    async def wait(self, job: Job, timeout: Optional[float] = None) -> bool:
        """Until the job ends (True) or the timeout passes (False), holding no thread while waiting."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if job.is_finished:
                return True
            self._waiters.setdefault(job.id, []).append((loop, future))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not job.is_finished:  # also covers jobs queued by others, which never call our hook
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                await asyncio.wait({future}, timeout=min(0.5, left) if left is not None else 0.5)
            return True
        finally:
            with self._lock:
                waiters = self._waiters.get(job.id, [])
                if (loop, future) in waiters:
                    waiters.remove((loop, future))
                if not waiters:
                    self._waiters.pop(job.id, None)

    def _on_finished(self, job: Job) -> None:
        """Runs on the worker when a job ends: wake waiters, keep overrides if asked, call the webhook."""
        with self._lock:
            waiters = self._waiters.pop(job.id, [])
            meta = self._meta.get(job.id)
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the loop is gone (server stopping)
                pass
        if meta is None:
            return
        if meta.client is not None:
            self.limits.release(meta.client)
        if job.state is JobState.done and not meta.restore_afterwards and meta.overrides:
            self._keep_overrides(meta.overrides)
        if meta.webhook:
            threading.Thread(target=self._call_webhook, args=(job, meta), name=f"webhook-{job.id[:8]}",
                             daemon=True).start()

    def _keep_overrides(self, overrides: dict[str, Any]) -> None:
        """override_settings_restore_afterwards=false: the job's overrides become the settings."""
        known = {k: v for k, v in overrides.items() if k in OPTIONS}
        try:
            self.engine.settings.update(known)
        except ValidationError as e:
            log.warning("could not keep override_settings after the job: %s", e)

    def _call_webhook(self, job: Job, meta: JobMeta) -> None:
        payload = json.dumps(self.summary(job), default=str).encode("utf-8")
        try:  # checked again on a fresh resolution, and sent to the address that passed (webhook_policy.py)
            meta.webhook_status = post_json(self.webhooks, meta.webhook, payload, WEBHOOK_TIMEOUT)
        except WebhookRefused as e:
            meta.webhook_status = f"refused: {e}"
            log.warning("webhook %s for job %s refused: %s", meta.webhook, job.id, e)
        except (OSError, ValueError, http.client.HTTPException) as e:
            meta.webhook_status = f"failed: {e}"
            log.warning("webhook %s for job %s failed: %s", meta.webhook, job.id, e)

    # -- views ------------------------------------------------------------------------------------
    def summary(self, job: Job) -> dict[str, Any]:
        """The job's state without images: for listings, webhooks and status."""
        out = job.to_dict()
        meta = self.meta(job.id)
        out["source"] = meta.source if meta else "other"
        output = job.result
        infotexts = list(getattr(output, "infotexts", None) or [])
        result = getattr(output, "result", None)
        out["seeds"] = list(getattr(result, "seeds", None) or [])
        out["infotexts"] = infotexts
        out["files"] = [self.public_path(p) for p in (getattr(output, "paths", None) or [])]
        out["result_url"] = f"/atelier/v1/jobs/{job.id}/result"
        if meta is not None and meta.webhook:
            out["webhook"] = meta.webhook_status or "pending"
        return out

    def public_path(self, path: Path) -> str:
        """A saved file as the client should name it: relative to outputs/ when it is under it."""
        try:
            return Path(path).resolve().relative_to(self.engine.paths.outputs_dir.resolve()).as_posix()
        except ValueError:
            return str(path)

    def preview_b64(self, job: Optional[Job]) -> Optional[str]:
        """The job's latest live preview as base64 PNG, encoded once per new preview."""
        if job is None or job.preview is None:
            return None
        step = job.preview_step
        with self._lock:
            cached_id, cached_step, cached = self._preview
            if cached_id == job.id and cached_step == step:
                return cached
        preview = job.preview
        if preview is None:
            return None
        encoded = images.encode_image(preview.convert("RGB"), "png")
        with self._lock:
            self._preview = (job.id, step, encoded)
        return encoded

    def get_job(self, job_id: str) -> Job:
        from .errors import ApiError

        job = self.engine.queue.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, or finished long enough ago to be forgotten)",
                           field="id")
        return job


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(True)
