"""Soak: 200 mixed requests from eight concurrent clients against the real server: tiny generations (both APIs,
txt2img and img2img), list routes, bad requests, progress polls, job polls, interrupts and option changes. After
a warm-up round, the process's RSS, open file descriptors and threads must stay flat (with slack for allocator
noise), no answer may be a 5xx, and every image the API handed out must exist on disk as a complete PNG whose
infotext names its seed.

A longer run: ATELIER_SOAK_ROUNDS=200 pytest tests/test_soak.py -s (rounds per client after the warm-up)."""
from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from tests.test_api_helpers import TINY, b64_png, gradient, make_engine, running_server

CLIENTS = 8
WARMUP_ROUNDS = 5  # per client: 8 x (5 + 20) = 200 requests by default
MEASURED_ROUNDS = int(os.environ.get("ATELIER_SOAK_ROUNDS", "20"))
RSS_SLACK = 120 * 2**20
FD_SLACK, THREAD_SLACK = 8, 6
LISTS = ["samplers", "schedulers", "sd-models", "sd-vae", "upscalers", "prompt-styles", "loras", "scripts",
         "options", "memory", "latent-upscale-modes", "embeddings"]
BAD = [("POST", "/sdapi/v1/txt2img", {**TINY, "width": 65}), ("POST", "/sdapi/v1/png-info", {"image": "@@"}),
       ("GET", "/atelier/v1/files/..%2f..%2fetc%2fpasswd", None), ("GET", "/atelier/v1/jobs/nope", None),
       ("POST", "/sdapi/v1/img2img", {**TINY, "init_images": ["aGVsbG8="]}), ("POST", "/sdapi/v1/options", [1])]


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("soak"))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def url(engine):
    with running_server(engine, ["--nowebui"]) as (base, _):
        yield base


class Tally:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sdapi_images = 0  # images returned by /sdapi/v1 calls that save them
        self.job_ids: list[str] = []
        self.server_errors: list[str] = []
        self.requests = 0

    def saw(self, response: httpx.Response, what: str) -> httpx.Response:
        with self.lock:
            self.requests += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{what}: {response.status_code} {response.text[:200]}")
        return response


def one_request(client: httpx.Client, tally: Tally, worker: int, i: int) -> None:
    """The i-th request of a client: a fixed rotation, so every run makes the same mix."""
    step = (i + worker) % 8
    seed = worker * 1000 + i
    if step == 0:
        r = tally.saw(client.post("/sdapi/v1/txt2img", json={**TINY, "seed": seed, "save_images": True}), "txt2img")
        if r.status_code == 200:
            with tally.lock:
                tally.sdapi_images += len(r.json()["images"])
    elif step == 1:
        tally.saw(client.get("/sdapi/v1/progress"), "progress")
    elif step == 2:
        tally.saw(client.get(f"/sdapi/v1/{LISTS[(i // 8 + worker) % len(LISTS)]}"), "list")
    elif step == 3:
        method, path, body = BAD[(i // 8 + worker) % len(BAD)]
        r = tally.saw(client.request(method, path, json=body), path)
        assert 400 <= r.status_code < 500, (path, r.text)
    elif step == 4:
        r = tally.saw(client.post("/atelier/v1/txt2img", json={**TINY, "steps": 3, "seed": seed}), "atelier")
        assert r.status_code == 202, r.text
        with tally.lock:
            tally.job_ids.append(r.json()["id"])
    elif step == 5:
        with tally.lock:
            target = tally.job_ids[-1] if tally.job_ids and i % 16 == 5 else None
        path = f"/atelier/v1/jobs/{target}/interrupt" if target else "/sdapi/v1/interrupt"
        r = tally.saw(client.post(path), "interrupt")
        assert r.status_code in (200, 409), r.text  # 409: that job had already ended
    elif step == 6:
        body = {**TINY, "seed": seed, "save_images": True, "init_images": [b64_png(gradient())],
                "denoising_strength": 0.5}
        r = tally.saw(client.post("/sdapi/v1/img2img", json=body), "img2img")
        if r.status_code == 200:
            with tally.lock:
                tally.sdapi_images += len(r.json()["images"])
    elif i % 16 == 7:  # an option change while jobs run (a setting that can't change what is made)
        r = tally.saw(client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1 + seed % 3}),
                      "options")
        assert r.status_code == 200, r.text
    else:
        with tally.lock:
            job_id = tally.job_ids[-1] if tally.job_ids else "none"
        tally.saw(client.get(f"/atelier/v1/jobs/{job_id}", params={"preview": True}), "job")


def run_round(url: str, tally: Tally, rounds: range) -> None:
    def client_loop(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in rounds:
                one_request(client, tally, worker, i)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_loop, range(CLIENTS)))


def usage() -> dict[str, int]:
    gc.collect()
    process = psutil.Process()
    return {"rss": process.memory_info().rss, "fds": len(os.listdir("/proc/self/fd")),
            "threads": process.num_threads()}


def finished_files(url: str, tally: Tally) -> list[str]:
    """Every atelier job's files, once each job has ended (interrupted ones keep what they finished)."""
    files = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for job_id in tally.job_ids:
            r = client.get(f"/atelier/v1/jobs/{job_id}/result", params={"wait": 60, "images": False})
            assert r.status_code == 200, r.text
            # Interrupting a job that is still queued cancels it.
            assert r.json()["state"] in ("done", "interrupted", "cancelled"), r.json()
            files += r.json()["files"]
    return files


def test_mixed_load_keeps_memory_descriptors_and_threads_flat(url, engine):
    tally = Tally()
    started = time.monotonic()
    run_round(url, tally, range(WARMUP_ROUNDS))
    finished_files(url, tally)  # the queue is idle again before the baseline is taken
    before = usage()
    run_round(url, tally, range(WARMUP_ROUNDS, WARMUP_ROUNDS + MEASURED_ROUNDS))
    atelier_files = finished_files(url, tally)
    after = usage()
    elapsed = time.monotonic() - started
    print(f"soak: {tally.requests} requests in {elapsed:.1f}s; before {before}, after {after}")

    assert tally.requests == CLIENTS * (WARMUP_ROUNDS + MEASURED_ROUNDS)
    assert not tally.server_errors, tally.server_errors
    assert after["rss"] - before["rss"] < max(RSS_SLACK, before["rss"] // 5), (before, after)
    assert after["fds"] - before["fds"] <= FD_SLACK, (before, after)
    assert after["threads"] - before["threads"] <= THREAD_SLACK, (before, after)

    outputs = engine.paths.outputs_dir
    for name in atelier_files:  # every file a job reported exists and is a whole image
        with Image.open(outputs / name) as image:
            image.load()
    on_disk = [p for p in Path(outputs).rglob("*.png") if not p.name.startswith(".")]
    for path in on_disk:
        with Image.open(path) as image:
            image.load()  # a truncated file raises here
            seed = path.stem.split("-")[1]  # NNNNN-SEED.png
            assert f"Seed: {seed}," in image.info["parameters"], (path, image.info)
    # Every image any API call returned was saved: the sdapi calls (save_images) plus the atelier jobs' files.
    assert len(on_disk) == tally.sdapi_images + len(atelier_files), (len(on_disk), tally.sdapi_images,
                                                                     len(atelier_files))
    assert tally.sdapi_images > 0 and atelier_files
