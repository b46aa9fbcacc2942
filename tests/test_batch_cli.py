"""tools/batch.py against the real server on loopback: JSON and CSV requests become images in a folder, and a
run stopped halfway resumes: finished rows are skipped, the job left running is followed, nothing is sent twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modules.infotext import parse_infotext
from tests.test_api_helpers import TINY, make_engine, running_server, wait_until

ROOT = Path(__file__).resolve().parent.parent
BLOCKED_SEED = 4  # the job the server holds while the first run is stopped


class SeedGate:
    """Holds the running job with a given seed before its second step, until opened."""

    def __init__(self, engine):
        self.engine, self.armed, self.entered, self.release = engine, False, threading.Event(), threading.Event()

    def hook(self, state) -> None:
        job = self.engine.queue.current()
        if self.armed and job is not None and job.request.seed == BLOCKED_SEED:
            self.entered.set()
            assert self.release.wait(60)

    def open(self) -> None:
        self.armed = False
        self.release.set()


@pytest.fixture(scope="module")
def server(tiny_dir, policy, tmp_path_factory):
    engine = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("batch"))
    gate = SeedGate(engine)
    engine.hooks.add("before_step", gate.hook)
    try:
        with running_server(engine, ["--nowebui"]) as (url, _):
            yield url, gate
    finally:
        gate.open()
        engine.shutdown()


def batch_cli(url: str, requests: Path, out: Path, *extra: str, wait: bool = True):
    command = [sys.executable, str(ROOT / "tools" / "batch.py"), str(requests), "--out", str(out), "--server", url,
               "--poll", "0.05", *extra]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def atelier_jobs(url: str) -> list[dict]:
    return [job for job in httpx.get(f"{url}/atelier/v1/jobs", timeout=30).json()["jobs"]
            if job["source"] == "atelier"]


def seed_of(path: Path) -> str:
    return parse_infotext(Image.open(path).info["parameters"])["Seed"]


def done_rows(out: Path) -> int:
    state = out / "batch-state.json"
    if not state.exists():
        return 0
    return sum(1 for entry in json.loads(state.read_text())["jobs"].values() if entry.get("state") == "done")


def test_a_stopped_batch_resumes_without_sending_anything_twice(server, tmp_path):
    url, gate = server
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{**TINY, "prompt": "a kite", "seed": seed} for seed in range(1, 7)]))
    out = tmp_path / "out"
    before = len(atelier_jobs(url))
    gate.armed = True
    first = batch_cli(url, requests, out, "--in-flight", "1", wait=False)
    try:
        assert gate.entered.wait(60), "the fourth job never ran"
        wait_until(lambda: done_rows(out) == 3)
    finally:
        first.send_signal(signal.SIGKILL)  # stopped hard, mid-batch: only the state file is left to go on
        first.wait(30)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(kept) == ["00000-1.png", "00001-2.png", "00002-3.png"]
    gate.open()

    second = batch_cli(url, requests, out, "--in-flight", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 already done, skipped; 3 to run" in second.stdout and "following job" in second.stdout
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{i:05d}-{i + 1}.png" for i in range(6)]
    assert [seed_of(out / name) for name in names] == [str(s) for s in range(1, 7)]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not fetched again
    jobs = atelier_jobs(url)[before:]
    assert sorted(job["seeds"][0] for job in jobs) == list(range(1, 7))  # six jobs: none sent twice

    third = batch_cli(url, requests, out)
    assert third.returncode == 0 and "6 already done, skipped; 0 to run" in third.stdout
    assert len(atelier_jobs(url)) == before + 6


def test_csv_rows_become_requests_and_a_refused_row_is_reported(server, tmp_path):
    url, _ = server
    requests = tmp_path / "requests.csv"
    requests.write_text("prompt,seed,steps,width,height,sampler_name\n"
                        "a red barn,21,1,64,64,\n"
                        "\"a barn, at night\",22,2,64,64,Euler a\n"
                        "bad,23,1,64,64,No such sampler\n")
    out = tmp_path / "out"
    run = batch_cli(url, requests, out)
    assert run.returncode == 1, run.stdout  # one row could not run
    assert "[2] refused: " in run.stdout and "sampler_name" in run.stdout
    first, second = (Image.open(out / name) for name in ("00000-21.png", "00001-22.png"))
    assert parse_infotext(first.info["parameters"])["Prompt"] == "a red barn"
    info = parse_infotext(second.info["parameters"])
    assert (info["Prompt"], info["Steps"], info["Sampler"]) == ("a barn, at night", "2", "Euler a")
    assert not any(out.glob("00002-*"))
    os.remove(out / "00000-21.png")  # a deleted image is made again on the next run
    again = batch_cli(url, requests, out)
    assert "0 already done" not in again.stdout and (out / "00000-21.png").exists()
