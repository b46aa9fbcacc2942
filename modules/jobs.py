"""One FIFO queue in front of one worker thread that owns the model.

Every generation (UI, API, scripts, batch) is submitted here, so two requests never race for the
GPU and everyone sees the same order, progress and "In queue: i/n" numbers.

Runner contract: `runner(job)` runs one job, passing `job.control` to processing. Its return
value becomes `job.result`. Runners that can be interrupted should set `job.result`
incrementally (e.g. append finished images) so an interrupted job keeps what was finished:
when `Interrupted` escapes, whatever is in `job.result` stays there.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Deque, Optional

from modules.errors import AtelierError
from modules.progress import GenerationControl, Interrupted, Skipped, StepReport
from modules.request import GenerationRequest

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"done", "failed", "interrupted", "cancelled"})


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    interrupted = "interrupted"
    cancelled = "cancelled"


FINISHED_STATES = frozenset({JobState.done, JobState.failed, JobState.interrupted, JobState.cancelled})


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    kind: str = "txt2img"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.queued
    created: float = field(default_factory=time.time)  # wall clock, so it serialises meaningfully
    started: Optional[float] = None
    finished: Optional[float] = None
    control: GenerationControl = field(default_factory=GenerationControl)
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    eta_seconds: Optional[float] = None
    preview: Any = None  # latest live preview (PIL image), only built every `preview_every` steps
    preview_step: int = 0  # step the preview was built at, so clients know when it's new
    result: Any = None
    error: Optional[str] = None
    on_finished: Optional[Callable[["Job"], None]] = field(default=None, repr=False)
    _queue: Optional["JobQueue"] = field(default=None, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def position(self) -> Optional[int]:
        """1-based place among queued jobs, or None once it has started (or without a queue)."""
        pos = self._queue.queue_position(self.id) if self._queue is not None else None
        return pos[0] if pos else None

    def interrupt(self) -> bool:
        return self._queue.interrupt(self.id) if self._queue is not None else _set(self.control.interrupt)

    def skip(self) -> bool:
        return self._queue.skip(self.id) if self._queue is not None else _set(self.control.skip)

    def to_dict(self) -> dict:
        pos = self._queue.queue_position(self.id) if self._queue is not None else None
        return {
            "id": self.id, "kind": self.kind, "state": self.state.value,
            "created": self.created, "started": self.started, "finished": self.finished,
            "step": self.step, "total_steps": self.total_steps, "progress": self.progress,
            "eta_seconds": self.eta_seconds, "error": self.error,
            "position": pos[0] if pos else None, "queue_size": pos[1] if pos else None,
            "has_preview": self.preview is not None, "preview_step": self.preview_step,
        }


def _set(action: Callable[[], None]) -> bool:
    action()
    return True


class Subscription:
    """A bounded, thread-safe event buffer for one listener; iterate it or call get()."""

    def __init__(self, maxsize: int = 256):
        self.maxsize = max(1, maxsize)
        self.dropped = 0  # events discarded because the listener fell behind
        self.overflowed = False  # closed because even terminal events no longer fit
        self._buf: Deque[dict] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def _put(self, event: dict) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._buf) >= self.maxsize and not self._make_room():
                # Only terminal events are left; they are never dropped silently. Allow some slack,
                # then give up on a listener that stopped reading so memory stays bounded.
                if len(self._buf) >= 4 * self.maxsize:
                    self.overflowed = True
                    self._closed = True
                    self._cond.notify_all()
                    return
            self._buf.append(event)
            self._cond.notify_all()

    def _make_room(self) -> bool:
        # Progress is superseded by the next progress event, so it is the cheapest loss; then
        # queued/started, whose information the job's state still carries. Terminal: never.
        for droppable in (lambda t: t == "progress", lambda t: t not in TERMINAL_EVENTS):
            for i, event in enumerate(self._buf):
                if droppable(event["type"]):
                    del self._buf[i]
                    self.dropped += 1
                    return True
        return False

    def get(self, timeout: Optional[float] = None) -> Optional[dict]:
        """Next event, or None on timeout or once closed and drained."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._buf or self._closed, timeout):
                return None
            return self._buf.popleft() if self._buf else None

    def drain(self) -> list[dict]:
        with self._cond:
            events = list(self._buf)
            self._buf.clear()
            return events

    def __iter__(self):
        while True:
            event = self.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class JobQueue:
    def __init__(self, runner: Callable[[Job], Any], preview_every: int = 0, max_finished: int = 500,
                 workers: int = 1):
        self.runner = runner
        # Jobs that may run at once: 1 for the local model owner; one per actor for a remote pool
        # (modules/ray_workers.py), where the runner only waits on its actor.
        self.workers = max(1, workers)
        self.preview_every = preview_every  # plain attribute: a settings change applies at once
        self.max_finished = max_finished
        # One lock guards jobs, queue order, subscribers and seq; events are emitted while holding
        # it so every subscriber sees state changes in the order they happened.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}  # insertion order = creation order
        self._pending: Deque[Job] = collections.deque()
        self._finished: Deque[str] = collections.deque()
        self._running: list[Job] = []  # oldest start first
        self._subscribers: list[Subscription] = []
        self._seq = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False


    def start(self) -> None:
        with self._lock:
            self._stopping = False
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < self.workers:
                # Daemon: a hung generation must not keep the process alive at exit.
                thread = threading.Thread(target=self._work, name="atelier-jobs", daemon=True)
                self._threads.append(thread)
                thread.start()

    def use_runner(self, runner: Callable[[Job], Any], workers: int = 1) -> None:
        """Swap the runner and how many jobs it may run at once (before the first job is submitted)."""
        with self._lock:
            self.runner = runner
        self.set_workers(workers)

    def set_workers(self, workers: int) -> None:
        """Change how many jobs may run at once; surplus worker threads end after their current job."""
        with self._lock:
            self.workers = max(1, workers)
            self._wake.notify_all()

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Cancel queued jobs, interrupt the running one, stop the worker. True if it stopped."""
        with self._lock:
            self._stopping = True
            cancelled = list(self._pending)
            self._pending.clear()
            for job in cancelled:
                self._finish(job, JobState.cancelled)
            for job in self._running:
                job.control.interrupt()
            self._wake.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for job in cancelled:
            _run_hook(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def submit(self, request: GenerationRequest, kind: str = "txt2img",
               on_finished: Optional[Callable[[Job], None]] = None) -> Job:
        """Queue a job and return at once. on_finished(job) runs on the worker; keep it quick."""
        job = Job(request=request, kind=kind, on_finished=on_finished, _queue=self)
        # An estimate for "In queue" displays; processing sets the real total (hires etc.).
        job.control.total = job.total_steps = request.steps * request.n_iter
        job.control.on_step = lambda report: self._on_step(job, report)
        with self._lock:
            if self._stopping:
                raise RuntimeError("job queue is shut down")
            self._jobs[job.id] = job
            self._pending.append(job)
            self._emit(job, "queued", kind=kind, position=len(self._pending))
            self._wake.notify()
        if sum(t.is_alive() for t in self._threads) < self.workers:
            self.start()
        return job

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def current(self) -> Optional[Job]:
        """The running job (the oldest one when several run at once)."""
        with self._lock:
            return self._running[0] if self._running else None

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running)

    def queue_position(self, job_id: str) -> Optional[tuple[int, int]]:
        """(i, n) for "In queue: i/n": 1-based place among queued jobs and how many are queued."""
        with self._lock:
            for i, job in enumerate(self._pending, 1):
                if job.id == job_id:
                    return i, len(self._pending)
            return None

    def wait(self, job_id: "str | Job", timeout: Optional[float] = None) -> Job:
        """Block until the job ends. Pass the Job itself if it may already have been evicted."""
        job = job_id if isinstance(job_id, Job) else self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if not job._ended.wait(timeout):
            raise TimeoutError(f"job {job.id} still {job.state.value} after {timeout}s")
        return job


    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job. A running job can only be interrupted, so that returns False."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state is not JobState.queued:
                return False
            self._pending.remove(job)
            self._finish(job, JobState.cancelled)
        _run_hook(job)  # outside the lock, so a hook may call back into the queue
        return True

    def interrupt(self, job_id: Optional[str] = None) -> bool:
        """Interrupt the given (or running) job; a queued one is cancelled instead."""
        with self._lock:
            job = (self._running[0] if self._running else None) if job_id is None else self._jobs.get(job_id)
            if job is None or job.is_finished:
                return False
            if job.state is not JobState.queued:
                job.control.interrupt()
                return True
        # It may start between the two locks; then interrupting it is still what was asked.
        return self.cancel(job.id) or self.interrupt(job.id)

    def skip(self, job_id: Optional[str] = None) -> bool:
        """Skip the running job's current batch. Only a running job can skip."""
        with self._lock:
            job = (self._running[0] if self._running else None) if job_id is None else self._jobs.get(job_id)
            if job is None or job.state is not JobState.running:
                return False
            job.control.skip()
            return True


    def subscribe(self, maxsize: int = 256) -> Subscription:
        sub = Subscription(maxsize)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
        sub.close()

    def _emit(self, job: Job, type_: str, **extra: Any) -> None:
        # Caller holds self._lock: seq assignment and delivery happen as one step.
        self._seq += 1
        event = {"type": type_, "job_id": job.id, "seq": self._seq, "time": time.time(), **extra}
        for sub in self._subscribers:
            sub._put(event)
        self._subscribers = [s for s in self._subscribers if not s.overflowed]


    def _on_step(self, job: Job, report: StepReport) -> None:
        built = False
        every = self.preview_every
        # Decoding a preview costs a VAE pass, so build it only when due, never on other steps.
        if every and report.preview is not None and report.step % every == 0:
            try:
                job.preview, job.preview_step, built = report.preview(), report.step, True
            except Exception:  # a broken preview must not break the generation
                logger.exception("live preview failed for job %s", job.id)
        with self._lock:
            job.step, job.total_steps = report.step, report.total
            job.progress = min(1.0, report.fraction)
            job.eta_seconds = report.eta_seconds
            self._emit(job, "progress", step=job.step, total_steps=job.total_steps,
                       progress=job.progress, eta_seconds=job.eta_seconds, preview=built)

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._pending or self._stopping or len(self._threads) > self.workers)
                if len(self._threads) > self.workers or not self._pending:
                    if me in self._threads:
                        self._threads.remove(me)
                    return  # surplus after set_workers(), or stopping and nothing left
                job = self._pending.popleft()
                job.state, job.started = JobState.running, time.time()
                job.control.started_at = time.monotonic()  # ETA counts from start, not from submit
                self._running.append(job)
                self._emit(job, "started", kind=job.kind)
            state, error = JobState.done, None
            try:
                result = self.runner(job)
                if result is not None:
                    job.result = result
                if job.control.interrupted:
                    state = JobState.interrupted
            except Interrupted:
                state = JobState.interrupted  # job.result keeps what the runner attached so far
            except Skipped:
                pass  # skipping the last batch just ends the job normally
            except AtelierError as e:
                state, error = JobState.failed, str(e) or type(e).__name__
                logger.warning("job %s failed: %s", job.id, error)
            except Exception as e:
                state, error = JobState.failed, f"{type(e).__name__}: {e}"
                logger.exception("job %s failed", job.id)
            with self._lock:
                self._running.remove(job)
                self._finish(job, state, error)
            _run_hook(job)

    def _finish(self, job: Job, state: JobState, error: Optional[str] = None) -> None:
        # Caller holds self._lock.
        job.state, job.error, job.finished = state, error, time.time()
        if state is JobState.done:
            job.progress, job.eta_seconds = 1.0, 0.0
        self._emit(job, state.value, **({"error": error} if error else {}))
        job._ended.set()
        self._finished.append(job.id)
        while len(self._finished) > self.max_finished:
            self._jobs.pop(self._finished.popleft(), None)


def _run_hook(job: Job) -> None:
    # A failing webhook must never take the worker (or a cancel call) down with it.
    if job.on_finished is None:
        return
    try:
        job.on_finished(job)
    except Exception:
        logger.exception("on_finished hook failed for job %s", job.id)
