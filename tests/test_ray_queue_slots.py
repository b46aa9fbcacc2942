"""The JobQueue seam the Ray dispatcher uses, without Ray: a runner with several slots runs that many jobs at once
in FIFO order, events and interrupts still go through the queue, and losing a slot leaves fewer running."""
from __future__ import annotations

import threading
import time

from modules.jobs import JobQueue, JobState
from modules.request import GenerationRequest
from tests.test_api_helpers import wait_until


class HeldRunner:
    """Each job waits until released, so a test can see how many run at once."""

    def __init__(self):
        self.release = threading.Event()
        self.active, self.most, self.order = 0, 0, []
        self.lock = threading.Lock()

    def __call__(self, job):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.order.append(job.request.prompt)
        try:
            while not self.release.wait(0.01):
                job.control.check()  # interrupt reaches a held job, as it reaches a remote one
            return job.request.prompt
        finally:
            with self.lock:
                self.active -= 1


def test_two_slots_run_two_jobs_at_once_in_fifo_order_and_interrupt_one():
    runner = HeldRunner()
    queue = JobQueue(lambda job: None)
    queue.use_runner(runner, workers=2)
    sub = queue.subscribe()
    jobs = [queue.submit(GenerationRequest(prompt=str(i), steps=1)) for i in range(4)]
    try:
        wait_until(lambda: runner.active == 2, 10)
        time.sleep(0.1)
        assert runner.most == 2 and runner.order == ["0", "1"]  # the third waits for a free slot
        assert queue.current() is jobs[0] and queue.running() == jobs[:2]
        assert jobs[2].state is JobState.queued and jobs[2].position == 1
        assert queue.interrupt(jobs[1].id)
        queue.wait(jobs[1], 10)
        wait_until(lambda: runner.order == ["0", "1", "2"], 10)  # its slot took the next job
        runner.release.set()
        for job in jobs:
            queue.wait(job, 10)
    finally:
        runner.release.set()
        assert queue.shutdown(timeout=5)
    assert [job.state for job in jobs] == [JobState.done, JobState.interrupted, JobState.done, JobState.done]
    assert [job.result for job in jobs] == ["0", None, "2", "3"]
    started = [e["job_id"] for e in sub.drain() if e["type"] == "started"]
    assert started == [job.id for job in jobs]


def test_fewer_workers_after_a_slot_is_lost():
    runner = HeldRunner()
    queue = JobQueue(runner, workers=2)
    try:
        first = [queue.submit(GenerationRequest(prompt=f"a{i}", steps=1)) for i in range(2)]
        wait_until(lambda: runner.active == 2, 10)
        queue.set_workers(1)  # as the dispatcher does when an actor dies
        runner.release.set()
        for job in first:
            queue.wait(job, 10)
        runner.release.clear()
        runner.most = 0
        later = [queue.submit(GenerationRequest(prompt=f"b{i}", steps=1)) for i in range(2)]
        wait_until(lambda: runner.active == 1, 10)
        time.sleep(0.1)
        assert runner.most == 1 and later[1].state is JobState.queued
        runner.release.set()
        for job in later:
            assert queue.wait(job, 10).state is JobState.done
    finally:
        runner.release.set()
        assert queue.shutdown(timeout=5)
