"""Jobs on a Ray cluster (`--workers ray`): one actor per device runs the generation core; the server keeps the rest.

The server's JobQueue still owns every job record, event, progress figure, cancel and interrupt. Only its
runner changes: `RayDispatcher.run` takes an idle actor (preferring one that has the job's checkpoint loaded),
streams the actor's step reports, previews and finished images back, and saves each image through the
server's own `Engine.keep_image`, so names, numbering and infotext are what one process would write.

Actors run `Engine.run_job` unchanged, on a `WorkerEngine` that hands images back instead of saving them.
An actor that dies costs its job one retry on another actor (`--ray-retries`), or the job fails with a
message; the pool shrinks and the server goes on with the actors left.

Only webui.py imports this module, and only with `--workers ray`: without it, Ray is never imported.
Cluster setup: docs/scale.md.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import ray

from modules.devices import DevicePolicy, choose_policy
from modules.engine import Engine, JobOutput
from modules.errors import AtelierError, GenerationError
from modules.extension_callbacks import JobErrors
from modules.jobs import Job
from modules.paths import Paths
from modules.processing import GenerationResult
from modules.progress import GenerationControl, Interrupted, Skipped, StepReport
from modules.request import GenerationRequest
from modules.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# What a dead actor (or its node, or its process) looks like to a caller waiting on it.
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
              ray.exceptions.NodeDiedError)
END_EVENTS = frozenset({"done", "interrupted", "error"})
CONTROL_POLL_SECONDS = 0.05
ACTOR_START_TIMEOUT = 600.0  # the first actor on a fresh node imports torch; a pending actor means no resources
PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "ATELIER_DATA_DIR")


class WorkerJobError(AtelierError):
    """A job failed inside an actor. The message is the one the local worker would have recorded."""


# -- the actor side ---------------------------------------------------------------------------------------


class WorkerEngine(Engine):
    """The engine inside an actor: loads models and generates (infotext included) exactly as the server's would,
    but hands each image back instead of saving it, so the server's numbering stays one sequence."""

    emit: Callable[[dict], None] = staticmethod(lambda event: None)
    pinned: Optional[tuple[str, str]] = None  # (name, path) the server chose for the job

    def checkpoint_name(self, request: GenerationRequest) -> Optional[str]:
        if self.pinned is None:
            return super().checkpoint_name(request)
        name, path = self.pinned
        if self.models.checkpoints.find(name) is None and Path(path).is_file():
            self.models.checkpoints.add_file(Path(path))  # a --ckpt file outside the folder
        return name

    def keep_image(self, output: JobOutput, request: GenerationRequest, image: Any, text: str,
                   seed: Optional[int], errors: Optional[JobErrors] = None, p: Any = None) -> None:
        output.images.append(image)
        output.infotexts.append(text)
        self.emit({"type": "image", "image": image, "text": text, "seed": seed})

    def _finish_grid(self, request: GenerationRequest, output: JobOutput, kind: str) -> None:
        pass  # the server builds (and saves) the grid from the images it kept


class GenerationWorker:
    """A Ray actor that owns one device (a GPU, or a CPU slot). It keeps its loaded checkpoint between jobs and
    runs one job at a time; `interrupt` and `skip` arrive on a second thread (max_concurrency > 1)."""

    def __init__(self, paths: Paths, policy: Optional[DevicePolicy], args: Any, settings: dict[str, Any],
                 with_extensions: bool):
        if policy is None:
            policy = choose_policy(use_cpu=not ray.get_gpu_ids() or "all" in (args.use_cpu or []),
                                   precision=args.precision, no_half=args.no_half, no_half_vae=args.no_half_vae,
                                   medvram=getattr(args, "medvram", False), lowvram=getattr(args, "lowvram", False))
        self.engine = WorkerEngine(paths, policy, Settings(file=None, values=dict(settings)))
        self.loads = 0  # checkpoint loads, so "loaded once per actor" can be checked
        self.engine.models.on_loaded.append(self._count_load)
        if with_extensions:  # the same extensions as the server, so extra-network tags and scripts work here too
            from modules.extensions import load_extensions

            load_extensions(self.engine, args)
        self._controls: dict[str, GenerationControl] = {}

    def _count_load(self, model: Any) -> None:
        self.loads += 1

    def info(self) -> dict[str, Any]:
        import torch  # loaded already by the engine; imported here only to report its thread count

        loaded = self.engine.models.current_file
        return {"pid": os.getpid(), "device": str(self.engine.policy.device), "threads": torch.get_num_threads(),
                "node": ray.get_runtime_context().get_node_id(), "checkpoint": loaded.name if loaded else None,
                "loads": self.loads}

    def run(self, job_id: str, request: GenerationRequest, checkpoint: Optional[tuple[str, str]],
            settings: dict[str, Any], preview_every: int) -> Iterator[dict[str, Any]]:
        """Run one job; yields step, image and finally one end event (done, interrupted or error)."""
        events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        control = GenerationControl()
        control.total = request.steps * request.n_iter
        control.on_step = lambda report: events.put(_step_event(report, preview_every))
        self._controls[job_id] = control
        engine = self.engine
        engine.settings.values = dict(settings)  # the server's settings as they are now, as a local job reads them
        engine.pinned, engine.emit = checkpoint, events.put
        job = Job(request=request, id=job_id, control=control)
        threading.Thread(target=self._run_job, args=(job, events), name="atelier-actor-job", daemon=True).start()
        try:
            while True:
                event = events.get()
                yield event
                if event["type"] in END_EVENTS:
                    return
        finally:
            self._controls.pop(job_id, None)

    def _run_job(self, job: Job, events: "queue.Queue[dict[str, Any]]") -> None:
        event: dict[str, Any] = {"type": "done"}
        try:
            self.engine.run_job(job)
        except Interrupted:
            event = {"type": "interrupted"}
        except Skipped:
            pass  # skipping the last batch ends the job normally, as in the local worker
        except AtelierError as e:
            event = {"type": "error", "message": str(e) or type(e).__name__}
        except Exception as e:  # noqa: BLE001 - reported to the server as the job's error
            log.exception("job %s failed in the actor", job.id)
            event = {"type": "error", "message": f"{type(e).__name__}: {e}"}
        output = job.result
        if isinstance(output, JobOutput):  # images went back one by one; don't send them twice
            event["result"] = dataclasses.replace(output.result, images=[])
            event["grid"] = output.grid
        loaded = self.engine.models.current_file
        event["checkpoint"] = loaded.name if loaded else None
        events.put(event)

    def interrupt(self, job_id: str) -> bool:
        control = self._controls.get(job_id)
        if control is not None:
            control.interrupt()
        return control is not None

    def skip(self, job_id: str) -> bool:
        control = self._controls.get(job_id)
        if control is not None:
            control.skip()
        return control is not None


def _step_event(report: StepReport, preview_every: int) -> dict[str, Any]:
    # A preview costs a decode, so it is built here only on the steps the server's queue would build it.
    preview = None
    if preview_every and report.preview is not None and report.step % preview_every == 0:
        try:
            preview = report.preview()
        except Exception:  # a broken preview must not break the generation
            log.exception("live preview failed")
    return {"type": "step", "step": report.step, "total": report.total, "preview": preview}


# -- the server side --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Slot:
    name: str
    actor: Any  # ray.actor.ActorHandle
    checkpoint: Optional[str] = None  # what the actor has loaded
    jobs_done: int = 0
    busy: bool = False


class ActorPool:
    """Idle/busy bookkeeping for the actors; hands out the idle actor that suits a checkpoint best."""

    def __init__(self, slots: list[Slot]):
        self._slots = list(slots)
        self._cond = threading.Condition()

    @property
    def slots(self) -> list[Slot]:
        with self._cond:
            return list(self._slots)

    def acquire(self, checkpoint: Optional[str]) -> Slot:
        """The idle actor with this checkpoint loaded, else one with none loaded, else the least used one."""
        with self._cond:
            self._cond.wait_for(lambda: not self._slots or any(not s.busy for s in self._slots))
            if not self._slots:
                raise GenerationError("no Ray workers are left (every actor has died); restart the server")
            idle = [s for s in self._slots if not s.busy]
            slot = (next((s for s in idle if checkpoint and s.checkpoint == checkpoint), None)
                    or next((s for s in idle if s.checkpoint is None), None)
                    or min(idle, key=lambda s: s.jobs_done))
            slot.busy = True
            return slot

    def release(self, slot: Slot) -> None:
        with self._cond:
            slot.busy = False
            self._cond.notify_all()

    def remove(self, slot: Slot) -> int:
        """Forget a dead actor; returns how many are left."""
        with self._cond:
            if slot in self._slots:
                self._slots.remove(slot)
            self._cond.notify_all()
            return len(self._slots)


class RayDispatcher:
    """The JobQueue's runner in Ray mode: one queue worker thread per actor, each waiting on the actor it took."""

    def __init__(self, engine: Engine, slots: list[Slot], retries: int = 1, owns_ray: bool = False):
        self.engine, self.pool, self.retries, self.owns_ray = engine, ActorPool(slots), max(0, retries), owns_ray
        self._last_checkpoint: Optional[str] = None  # a request without one runs on the last one, as locally
        self._lock = threading.Lock()

    def run(self, job: Job) -> JobOutput:
        output = JobOutput(GenerationResult())
        job.result = output
        errors = JobErrors(output.result.notes)  # extensions' failures while saving, as in Engine.run_job
        checkpoint = self._checkpoint_for(job.request)
        for attempt in range(self.retries + 1):
            slot = self.pool.acquire(checkpoint[0] if checkpoint else None)
            try:
                self._run_on(slot, job, output, errors, checkpoint)
                break
            except ACTOR_LOST as e:
                left = self._lose(slot, e)
                if attempt >= self.retries:
                    raise GenerationError(f"the Ray worker {slot.name} died while running this job "
                                          f"({type(e).__name__}); {left} worker(s) left") from None
                log.warning("job %s: worker %s died; retrying on another (%d left)", job.id, slot.name, left)
            finally:
                self.pool.release(slot)
        if output.grid is None:
            self.engine._finish_grid(job.request, output, job.kind)  # the engine's own grid saving, as locally
        return output

    def _checkpoint_for(self, request: GenerationRequest) -> Optional[tuple[str, str]]:
        """(name, path) of the checkpoint the job needs, resolved here so every actor loads the same file."""
        models = self.engine.models
        with self._lock:
            wanted = self.engine.checkpoint_name(request) or self._last_checkpoint
            found = models.checkpoints.find(wanted) if wanted else models.default_checkpoint()
            if found is None:
                return (wanted, "") if wanted else None  # the actor reports the unknown name as locally
            self._last_checkpoint = found.name
            return found.name, str(found.path)

    def _run_on(self, slot: Slot, job: Job, output: JobOutput, errors: JobErrors,
                checkpoint: Optional[tuple[str, str]]) -> None:
        already, seen = len(output.images), 0  # a retry regenerates the same images: keep each one once
        stream = slot.actor.run.options(num_returns="streaming").remote(
            job.id, job.request, checkpoint, self.engine.settings.all(), self.engine.queue.preview_every)
        stop = threading.Event()
        watcher = threading.Thread(target=_forward_controls, args=(job, slot.actor, stop), daemon=True,
                                   name=f"atelier-ray-control-{job.id[:8]}")
        watcher.start()
        try:
            for ref in stream:
                event = ray.get(ref)
                if event["type"] == "step":
                    _report_step(job.control, event)
                elif event["type"] == "image":
                    seen += 1
                    if seen > already:
                        self.engine.keep_image(output, job.request, event["image"], event["text"], event["seed"],
                                               errors)
                else:
                    return self._end(slot, output, event)
        finally:
            stop.set()
            watcher.join()
        raise GenerationError(f"the Ray worker {slot.name} ended the job without a result")

    def _end(self, slot: Slot, output: JobOutput, event: dict[str, Any]) -> None:
        slot.checkpoint = event.get("checkpoint") or slot.checkpoint
        result = event.get("result")
        if result is not None:
            notes = output.result.notes  # what went wrong here while saving joins what the actor noted
            result.images = list(output.images)
            result.notes.extend(note for note in notes if note not in result.notes)
            output.result = result
        if event.get("grid") is not None:
            output.grid = event["grid"]
        if event["type"] == "interrupted":
            raise Interrupted()
        if event["type"] == "error":
            raise WorkerJobError(event["message"])
        slot.jobs_done += 1

    def _lose(self, slot: Slot, error: Exception) -> int:
        left = self.pool.remove(slot)
        log.error("Ray worker %s is gone (%s); %d left", slot.name, type(error).__name__, left)
        self.engine.queue.set_workers(left)  # one queue thread per live actor (at least one, to fail jobs)
        return left

    def stats(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "checkpoint": s.checkpoint, "jobs_done": s.jobs_done, "busy": s.busy}
                for s in self.pool.slots]

    def close(self) -> None:
        for slot in self.pool.slots:
            try:
                ray.kill(slot.actor)
            except Exception:  # already gone, or Ray already shut down
                pass
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()


def _report_step(control: GenerationControl, event: dict[str, Any]) -> None:
    """The actor's step, as the queue's progress hook expects it (ETA from the server's own start time)."""
    control.step, control.total = event["step"], event["total"]
    preview = event["preview"]
    if control.on_step is not None:
        control.on_step(StepReport(event["step"], event["total"], control.started_at,
                                   (lambda: preview) if preview is not None else None))


def _forward_controls(job: Job, actor: Any, stop: threading.Event) -> None:
    """Pass the job's interrupt and skip on to the actor. Repeated until the actor has the job, since a
    request sent before its run() began would find nothing to act on."""
    interrupt = skips = 0
    while not stop.wait(CONTROL_POLL_SECONDS):
        try:
            job.control.check()  # raises once per skip, and on every call once interrupted
        except Interrupted:
            interrupt = interrupt or 1
        except Skipped:
            skips += 1
        try:
            if interrupt == 1 and ray.get(actor.interrupt.remote(job.id)):
                interrupt = 2  # delivered
            while skips and ray.get(actor.skip.remote(job.id)):
                skips -= 1
        except ACTOR_LOST:
            return  # the dispatcher sees the death on the stream


# -- starting -----------------------------------------------------------------------------------------------


def start_ray_workers(engine: Engine, args: Any, policy: Optional[DevicePolicy] = None,
                      actors: Optional[int] = None) -> RayDispatcher:
    """Connect to (or start) Ray, start one actor per device and make them the engine queue's runner.
    `policy` forces the actors' device policy (tests); by default each actor picks its own."""
    owns_ray = not ray.is_initialized()
    if owns_ray:  # no address: a local Ray with this machine's devices
        ray.init(address=args.ray_address, include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = actors or args.ray_actors or max(1, gpus)
    resources = {"num_cpus": 1, "num_gpus": 1} if gpus and policy is None else {"num_cpus": 1}
    worker_class = ray.remote(GenerationWorker)
    tag = uuid.uuid4().hex[:6]
    slots = []
    for i in range(count):
        actor = worker_class.options(name=f"atelier-worker-{tag}-{i}", max_concurrency=4, max_restarts=0,
                                     runtime_env=_runtime_env(), **resources).remote(
            engine.paths, policy, args, engine.settings.all(), engine.extensions is not None)
        slots.append(Slot(f"worker-{i}", actor))
    try:
        infos = ray.get([slot.actor.info.remote() for slot in slots], timeout=ACTOR_START_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        raise GenerationError(f"{count} Ray actor(s) with {resources} each did not start in "
                              f"{ACTOR_START_TIMEOUT:.0f} s; does the cluster have the resources?") from None
    for slot, info in zip(slots, infos):
        log.info("Ray %s: pid %s on node %s, %s", slot.name, info["pid"], info["node"][:8], info["device"])
    dispatcher = RayDispatcher(engine, slots, retries=args.ray_retries, owns_ray=owns_ray)
    engine.queue.use_runner(dispatcher.run, workers=len(slots))
    return dispatcher


def _runtime_env() -> dict[str, Any]:
    # Actors import Atelier from the same checkout path on every node (docs/scale.md) and stay offline if we are.
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": env}
