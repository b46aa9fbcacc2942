"""Showing a job in the browser: progress bar with ETA, "In queue: i/n", live previews, then the result.

Generate handlers are generator functions: they submit the request, then poll the job (the browser gets
each change as it happens) until it ends. The job id is kept in the browser's localStorage, so after a
page reload the tab finds its job again and reattaches to it; Interrupt and Skip act on that job.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Optional

import gradio as gr

from modules.jobs import Job, JobState
from modules.ui.common import UIContext, error_html, esc, note_html, user_message
from modules.ui.outputs import OutputPanel, result_updates
from modules.ui.toprow import Toprow

POLL_SECONDS = 0.25


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def progress_html(job: Job, prefix: str = "") -> str:
    info = job.to_dict()
    if info["state"] == JobState.queued.value:
        position, size = info["position"], info["queue_size"]
        text = f"In queue: {position}/{size}" if position else "In queue"
        return (f'<div class="atelier-progress queued" data-state="queued">'
                f'<span class="text">{esc(prefix + text)}</span></div>')
    percent = 100.0 * (info["progress"] or 0.0)
    if info["step"]:
        eta = format_eta(info["eta_seconds"])
        text = f"{percent:.0f}%" + (f" · ETA {eta}" if eta else "") + f" · step {info['step']}/{info['total_steps']}"
    else:
        starting = job.started and time.time() - job.started < 2
        text = "Preparing…" if starting else "Loading model / encoding prompts…"
    return (f'<div class="atelier-progress" data-state="running" data-progress="{percent:.1f}">'
            f'<div class="bar" style="width:{percent:.1f}%"></div><span class="text">{esc(prefix + text)}</span></div>')


class JobView:
    """A tab's progress area, output panel and buttons, driven by one job at a time."""

    def __init__(self, ctx: UIContext, toprow: Toprow, panel: OutputPanel, kind: str):
        self.ctx, self.toprow, self.panel, self.kind = ctx, toprow, panel, kind

    @property
    def outputs(self) -> list:
        return [*self.panel.outputs, self.toprow.generate, self.toprow.interrupt, self.toprow.skip]

    def running(self, job: Job) -> dict:
        return {self.panel.job_id: job.id, self.toprow.generate: gr.update(visible=False),
                self.toprow.interrupt: gr.update(visible=True), self.toprow.skip: gr.update(visible=True),
                self.panel.progress: progress_html(job), self.panel.preview: gr.update(value=None, visible=False)}

    def idle(self) -> dict:
        return {self.toprow.generate: gr.update(visible=True), self.toprow.interrupt: gr.update(visible=False),
                self.toprow.skip: gr.update(visible=False), self.panel.preview: gr.update(value=None, visible=False)}

    def error(self, message: str) -> dict:
        return {**self.idle(), self.panel.progress: error_html(message)}

    def submit(self, request) -> Job:
        return self.ctx.engine.submit(request, kind=self.kind)

    def follow(self, job: Job, prefix: str = "", final: bool = True) -> Iterator[dict]:
        """Yield progress updates until the job ends, then (if final) its result."""
        queue = self.ctx.engine.queue
        shown, preview_step = None, None
        while not job.is_finished:
            updates: dict = {}
            html = progress_html(job, prefix)
            if html != shown:
                updates[self.panel.progress] = shown = html
            if job.preview is not None and job.preview_step != preview_step:
                preview_step = job.preview_step
                updates[self.panel.preview] = gr.update(value=job.preview, visible=True)
            if updates:
                yield updates
            try:
                queue.wait(job, POLL_SECONDS)
            except TimeoutError:
                pass
        if final:
            yield self.finished(job)

    def finished(self, job: Job) -> dict:
        updates = {**self.idle(), **result_updates(self.ctx, self.panel, job)}
        if job.state is JobState.failed:
            updates[self.panel.progress] = error_html(job.error or "the job failed")
        elif job.state is JobState.interrupted:
            updates[self.panel.progress] = note_html(f"Interrupted at step {job.step}/{job.total_steps}.")
        elif job.state is JobState.cancelled:
            updates[self.panel.progress] = note_html("Cancelled before it started.")
        else:
            updates[self.panel.progress] = ""
        return updates

    def run_single(self, build_request: Callable[[dict], Any]) -> Callable[[dict], Iterator[dict]]:
        """A generate handler for one request built from the form."""
        def run(data: dict) -> Iterator[dict]:
            from modules.ui import scripts_ui

            try:
                request = build_request(data)
                if scripts_ui.is_builtin(request):  # it queues its own jobs: run it here, never on the worker
                    request.validate()
                    yield from scripts_ui.run_builtin(self, request)
                    return
                job = self.submit(request)
            except Exception as e:  # bad input: say what is wrong, leave the tab usable
                yield self.error(user_message(e))
                return
            yield self.running(job)
            yield from self.follow(job)
        return run

    def wire(self, handler: Callable[[dict], Iterator[dict]], inputs: set) -> None:
        """Generate / Interrupt / Skip buttons, and reattaching to the tab's job after a page reload."""
        self.toprow.generate.click(handler, inputs, self.outputs, concurrency_limit=None, show_progress="hidden")
        self.toprow.interrupt.click(self.interrupt, self.panel.job_id, None, queue=False)
        self.toprow.skip.click(self.skip, self.panel.job_id, None, queue=False)
        self.ctx.blocks.load(self.reattach, self.panel.job_id, self.outputs, concurrency_limit=None,
                             show_progress="hidden")

    def _job(self, job_id: Optional[str]) -> Optional[Job]:
        return self.ctx.engine.queue.get(job_id) if job_id else None

    def interrupt(self, job_id: Optional[str]) -> None:
        job = self._job(job_id)
        if job is not None:
            job.interrupt()

    def skip(self, job_id: Optional[str]) -> None:
        job = self._job(job_id)
        if job is not None:
            job.skip()

    def reattach(self, job_id: Optional[str]) -> Iterator[dict]:
        job = self._job(job_id)
        if job is None:
            yield {self.toprow.generate: gr.update()}  # nothing to show (yielding nothing would blank outputs)
            return
        if not job.is_finished:
            yield self.running(job)
            yield from self.follow(job)
        else:
            yield self.finished(job)
