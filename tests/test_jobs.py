"""JobQueue tests with plain runner functions: no model, just steps that sleep."""
from __future__ import annotations

import threading
import time

import pytest

from modules.errors import GenerationError
from modules.jobs import Job, JobQueue, JobState
from modules.progress import Skipped
from modules.request import GenerationRequest

STEP = 0.005


def req(prompt: str = "", steps: int = 5) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, steps=steps)


def step_runner(job: Job, delay: float = STEP, preview=None):
    """Like processing: check before each step, report after it, attach results as they finish."""
    job.control.total = job.request.steps
    job.result = []
    for i in range(job.request.steps):
        job.control.check()
        time.sleep(delay)
        job.result.append(i)
        job.control.report_step(preview)
    return f"out:{job.request.prompt}"


@pytest.fixture
def make_queue():
    queues = []

    def make(runner=step_runner, **kw) -> JobQueue:
        q = JobQueue(runner, **kw)
        queues.append(q)
        return q

    yield make
    for q in queues:
        assert q.shutdown(timeout=5)


def gated(runner=step_runner):
    """A runner whose job with prompt 'gate' blocks until released, so others stay queued."""
    gate, entered = threading.Event(), threading.Event()

    def run(job):
        if job.request.prompt == "gate":
            entered.set()
            assert gate.wait(5)
            return "gate"
        return runner(job)

    return run, gate, entered


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.001)


def test_fifo_across_threads(make_queue):
    order, lock = [], threading.Lock()

    def runner(job):
        with lock:
            order.append(job.id)
        return f"out:{job.request.prompt}"

    run, gate, entered = gated(runner)
    q = make_queue(run)
    sub = q.subscribe(maxsize=1000)
    g = q.submit(req("gate"))
    assert entered.wait(5)

    jobs, jobs_lock = [], threading.Lock()

    def submitter(t):
        for i in range(6):
            job = q.submit(req(f"t{t}-{i}"))
            with jobs_lock:
                jobs.append(job)

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(jobs) == 30
    gate.set()
    for job in jobs:
        assert q.wait(job.id, timeout=5).state is JobState.done
    assert q.wait(g.id, 5).result == "gate"

    queued_order = [e["job_id"] for e in sub.drain() if e["type"] == "queued" and e["job_id"] != g.id]
    assert order == queued_order  # run order == queue order
    assert order == [j.id for j in q.list() if j.id != g.id]  # == creation order
    for job in jobs:
        assert job.result == f"out:{job.request.prompt}"


def test_progress_eta_and_preview_every_n(make_queue):
    calls = []

    def preview():
        calls.append(1)
        return f"img{len(calls)}"

    q = make_queue(lambda job: step_runner(job, 0.01, preview), preview_every=3)
    sub = q.subscribe()
    job = q.wait(q.submit(req("p", steps=10)).id, 5)
    assert job.state is JobState.done
    assert len(calls) == 3  # steps 3, 6, 9 only
    assert job.preview == "img3" and job.preview_step == 9
    assert job.step == 10 and job.total_steps == 10 and job.progress == 1.0

    progress = [e for e in sub.drain() if e["type"] == "progress"]
    assert [e["step"] for e in progress] == list(range(1, 11))
    assert [e["progress"] for e in progress] == pytest.approx([i / 10 for i in range(1, 11)])
    assert [e["preview"] for e in progress] == [s % 3 == 0 for s in range(1, 11)]
    etas = [e["eta_seconds"] for e in progress]
    assert all(eta is not None for eta in etas)
    assert etas[0] > etas[4] > etas[-1] == 0  # counts down; ~0.09 s at step 1
    assert etas[0] < 2.0  # counted from start, not from submit

    q.preview_every = 0
    calls.clear()
    q.wait(q.submit(req("p", steps=6)).id, 5)
    assert calls == []


def test_cancel_queued_and_not_running(make_queue):
    ran = []
    run, gate, entered = gated(lambda job: ran.append(job.request.prompt))
    q = make_queue(run)
    g = q.submit(req("gate"))
    assert entered.wait(5)
    a, b = q.submit(req("a")), q.submit(req("b"))
    finished = []
    c = q.submit(req("c"), on_finished=finished.append)

    assert q.cancel(a.id) is True
    assert a.state is JobState.cancelled and a.finished is not None
    assert q.cancel(a.id) is False
    assert q.cancel(g.id) is False  # running: interrupt it instead
    assert q.interrupt(c.id) is True  # interrupting a queued job cancels it
    assert c.state is JobState.cancelled and finished == [c]
    assert q.cancel("nope") is False
    gate.set()
    assert q.wait(b.id, 5).state is JobState.done
    assert q.wait(a.id, 0).state is JobState.cancelled
    assert ran == ["b"]
    assert q.cancel(b.id) is False


def test_interrupt_running_within_a_step_keeps_partial_result(make_queue):
    q = make_queue(lambda job: step_runner(job, 0.01))
    job = q.submit(req("long", steps=1000))
    wait_for(lambda: job.step >= 3)
    t0, step_at_interrupt = time.monotonic(), job.step
    assert q.interrupt() is True
    q.wait(job.id, 5)
    assert job.step - step_at_interrupt <= 1  # stopped at the next check, i.e. within one step
    assert time.monotonic() - t0 < 1.0
    assert job.state is JobState.interrupted
    assert 3 <= len(job.result) < 1000  # partial result kept
    assert q.interrupt() is False  # nothing running now
    # The worker carries on with the next job.
    assert q.wait(q.submit(req("next")).id, 5).state is JobState.done


def test_interrupt_flag_at_end_counts_as_interrupted(make_queue):
    def runner(job):  # a runner that swallows Interrupted and returns what it has
        job.control.interrupt()
        return "partial"

    q = make_queue(runner)
    job = q.wait(q.submit(req()).id, 5)
    assert job.state is JobState.interrupted and job.result == "partial"


def test_skip(make_queue):
    def runner(job):
        job.control.total = 3 * 50
        batches = []
        for _ in range(3):
            try:
                for _ in range(50):
                    job.control.check()
                    time.sleep(0.002)
                    job.control.report_step()
                batches.append("done")
            except Skipped:
                batches.append("skipped")
        return batches

    q = make_queue(runner)
    job = q.submit(req())
    wait_for(lambda: job.step >= 2)
    assert job.skip() is True
    assert q.wait(job.id, 5).state is JobState.done
    assert job.result == ["skipped", "done", "done"]
    assert q.skip() is False and q.skip(job.id) is False

    def escaping(job):
        job.control.skip()
        job.control.check()

    q2 = make_queue(escaping)
    assert q2.wait(q2.submit(req()).id, 5).state is JobState.done


def test_runner_error_fails_only_that_job(make_queue):
    def runner(job):
        if job.request.prompt == "boom":
            raise ValueError("bad thing")
        if job.request.prompt == "nan":
            raise GenerationError("NaNs in the result")
        return "ok"

    q = make_queue(runner)
    sub = q.subscribe()
    bad, nan, good = q.submit(req("boom")), q.submit(req("nan")), q.submit(req("fine"))
    assert q.wait(bad.id, 5).state is JobState.failed
    assert bad.error == "ValueError: bad thing"
    assert q.wait(nan.id, 5).error == "NaNs in the result"
    assert q.wait(good.id, 5).state is JobState.done and good.result == "ok" and good.error is None
    failed = [e for e in sub.drain() if e["type"] == "failed"]
    assert [e["error"] for e in failed] == ["ValueError: bad thing", "NaNs in the result"]
    assert bad.to_dict()["error"] == "ValueError: bad thing"


def test_on_finished_hook_and_failing_hook(make_queue):
    seen = []

    def bad_hook(job):
        raise RuntimeError("webhook down")

    q = make_queue(lambda job: "r")
    a = q.submit(req(), on_finished=bad_hook)
    b = q.submit(req(), on_finished=lambda job: seen.append((job.id, job.state, job.result)))
    q.wait(a.id, 5)
    q.wait(b.id, 5)
    wait_for(lambda: seen)
    assert seen == [(b.id, JobState.done, "r")]


def test_events_in_order_for_every_subscriber(make_queue):
    q = make_queue()
    subs = [q.subscribe(maxsize=1000) for _ in range(3)]
    jobs = [q.submit(req(str(i), steps=3)) for i in range(3)]
    for job in jobs:
        q.wait(job.id, 5)
    streams = [s.drain() for s in subs]
    assert streams[0] == streams[1] == streams[2]
    events = streams[0]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for job in jobs:
        types = [e["type"] for e in events if e["job_id"] == job.id]
        assert types == ["queued", "started", "progress", "progress", "progress", "done"]
    # Jobs run one after another: each one's "started" follows the previous one's "done".
    lifecycle = [(e["type"], e["job_id"]) for e in events if e["type"] in ("started", "done")]
    assert lifecycle == [(t, j.id) for j in jobs for t in ("started", "done")]

    q.unsubscribe(subs[0])
    q.wait(q.submit(req(steps=1)).id, 5)
    assert subs[0].drain() == [] and subs[0].get(timeout=0) is None
    assert len(subs[1].drain()) == 4


def test_slow_subscriber_is_bounded_and_keeps_terminal_events(make_queue):
    q = make_queue(lambda job: step_runner(job, 0))
    slow = q.subscribe(maxsize=8)
    jobs = [q.submit(req(str(i), steps=40)) for i in range(3)]
    for job in jobs:
        q.wait(job.id, 5)
    events = slow.drain()
    assert len(events) <= 8 and slow.dropped >= 3 * 42 - 8
    assert [e["job_id"] for e in events if e["type"] == "done"] == [j.id for j in jobs]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)

    # Terminal events alone never get dropped silently; past a hard cap the listener is cut off.
    tiny = q.subscribe(maxsize=2)
    many = [q.submit(req(steps=1)) for _ in range(12)]
    for job in many:
        q.wait(job.id, 5)
    kept = tiny.drain()
    assert tiny.overflowed and len(kept) <= 8 and all(e["type"] == "done" for e in kept)
    assert list(tiny) == []  # closed: iteration ends


def test_queue_position(make_queue):
    run, gate, entered = gated()
    q = make_queue(run)
    g = q.submit(req("gate"))
    assert entered.wait(5)
    a, b, c = (q.submit(req(x, steps=1)) for x in "abc")
    assert q.current() is g and q.queue_position(g.id) is None and g.position is None
    assert [q.queue_position(j.id) for j in (a, b, c)] == [(1, 3), (2, 3), (3, 3)]
    assert q.cancel(b.id)
    assert [q.queue_position(j.id) for j in (a, c)] == [(1, 2), (2, 2)]
    assert c.position == 2 and c.to_dict()["position"] == 2 and c.to_dict()["queue_size"] == 2
    gate.set()
    q.wait(c.id, 5)
    assert q.queue_position(c.id) is None and q.current() is None


def test_finished_jobs_are_capped(make_queue):
    q = make_queue(lambda job: None, max_finished=3)
    jobs = [q.submit(req()) for _ in range(6)]
    for job in jobs:
        assert q.wait(job, 5).state is JobState.done  # a Job works even once evicted
    with pytest.raises(KeyError):
        q.wait(jobs[0].id)
    assert [j.id for j in q.list()] == [j.id for j in jobs[3:]]
    assert q.get(jobs[0].id) is None and q.get(jobs[5].id) is jobs[5]


def test_to_dict_is_plain_json(make_queue):
    import json

    q = make_queue(lambda job: step_runner(job, 0, preview=lambda: object()), preview_every=1)
    job = q.wait(q.submit(req("x", steps=2), kind="img2img").id, 5)
    d = job.to_dict()
    json.dumps(d)
    assert d["state"] == "done" and d["kind"] == "img2img" and d["has_preview"] is True
    assert d["started"] >= d["created"] and d["finished"] >= d["started"]


def test_shutdown_cancels_queue_and_interrupts_running(make_queue):
    q = make_queue(lambda job: step_runner(job, 0.01))
    running = q.submit(req("r", steps=1000))
    queued = q.submit(req("q"))
    wait_for(lambda: running.step >= 1)
    assert q.shutdown(timeout=5) is True
    assert running.state is JobState.interrupted and queued.state is JobState.cancelled
    with pytest.raises(RuntimeError):
        q.submit(req())
    with pytest.raises(TimeoutError):
        q2 = make_queue(lambda job: time.sleep(0.3))
        q2.wait(q2.submit(req()).id, timeout=0.01)
