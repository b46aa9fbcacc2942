"""`--workers ray` on a local two-CPU Ray cluster started here: jobs through the real API run on two actors and
give the single-process pixels, names and infotexts; progress, previews, interrupt and skip come back; a killed
actor's job is retried (or fails, never vanishes) and the server keeps answering."""
from __future__ import annotations

import json

import httpx
import pytest

ray = pytest.importorskip("ray")

from modules import cmd_args  # noqa: E402
from modules.infotext import parse_infotext  # noqa: E402
from tests.test_api_helpers import (TINY, decode, events_of_one_job, make_engine, running_server,  # noqa: E402
                                     wait_until)

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MB; tiny images need far less
LONG = dict(width=64, height=64, steps=150)  # long enough to be caught mid-job on a busy machine


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local(tiny_dir, policy, tmp_path_factory):
    """The single-process server the Ray results must equal, for the same request bodies. Each actor owns one
    CPU (Ray gives it one thread); fp32 sums split over two threads differ in the last bit, so this runs on one
    too. Ray's server process computes nothing, so the setting only touches this baseline."""
    import torch

    engine = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("local"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # after the engine, whose backend setup asks for every core
    try:
        with running_server(engine, ["--nowebui"]) as (url, _):
            with httpx.Client(base_url=url, timeout=120) as client:
                yield client
    finally:
        engine.shutdown()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workers(cluster, tiny_dir, policy, tmp_path_factory):
    from modules.ray_workers import start_ray_workers

    engine = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("ray"))
    dispatcher = start_ray_workers(engine, cmd_args.parse(["--workers", "ray"]), policy=policy, actors=2)
    yield engine, dispatcher
    engine.shutdown()
    dispatcher.close()


@pytest.fixture(scope="module")
def http(workers):
    with running_server(workers[0], ["--nowebui"]) as (url, _):
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client


def local_run(local, **fields) -> dict:
    body = result(local, submit(local, **fields))
    assert body["state"] == "done", body["error"]
    return body


def result(http, job_id: str) -> dict:
    response = http.get(f"/atelier/v1/jobs/{job_id}/result", params={"wait": 120})
    assert response.status_code == 200, response.text
    return response.json()


def submit(http, **fields) -> str:
    response = http.post("/atelier/v1/txt2img", json=fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def actor_infos(dispatcher) -> dict[str, dict]:
    return {slot.name: ray.get(slot.actor.info.remote()) for slot in dispatcher.pool.slots}


def busy_slot(dispatcher, http, job_id):
    wait_until(lambda: http.get(f"/atelier/v1/jobs/{job_id}").json()["step"] >= 2, 60, "the job never ran")
    [slot] = [s for s in dispatcher.pool.slots if s.busy]
    return slot


def test_twenty_jobs_run_on_both_actors_and_equal_the_single_process_pixels(workers, http, local):
    engine, dispatcher = workers
    seeds = list(range(100, 120))
    response = http.post("/atelier/v1/batch", json={"base": {**TINY, "prompt": "a red barn"},
                                                    "expand": {"seed": seeds}})
    assert response.status_code == 202, response.text
    bodies = [result(http, job_id) for job_id in response.json()["ids"]]
    assert [b["state"] for b in bodies] == ["done"] * 20
    for seed, body in zip(seeds, bodies):
        expected = local_run(local, prompt="a red barn", seed=seed, **TINY)
        [image] = [decode(data) for data in body["images"]]
        assert image.tobytes() == decode(expected["images"][0]).tobytes(), f"seed {seed}"
        assert body["infotexts"] == expected["infotexts"]  # same model hash, seed, sampler ... as one process
        # Same folder and name; the number is the save order, which two actors may swap.
        assert [unnumbered(f) for f in body["files"]] == [unnumbered(f) for f in expected["files"]]
        [saved] = body["files"]  # saved by the server, with the infotext in the PNG
        png = http.get(f"/atelier/v1/files/{saved}")
        assert parse_infotext(decode_bytes(png.content).info["parameters"])["Seed"] == str(seed)
    assert sorted(int(b["files"][0].rsplit("/", 1)[1].split("-")[0]) for b in bodies) == list(range(20))
    done = {s["name"]: s["jobs_done"] for s in dispatcher.stats()}
    assert sum(done.values()) == 20 and min(done.values()) >= 1, done  # both actors worked
    infos = actor_infos(dispatcher)
    assert all(i["loads"] == 1 and i["checkpoint"] == "tiny-sd1.safetensors" for i in infos.values()), infos


def unnumbered(path: str) -> tuple[str, str]:
    folder, name = path.rsplit("/", 1)
    return folder, name.split("-", 1)[1]


def decode_bytes(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def test_a_job_goes_to_the_actor_that_has_its_checkpoint(workers, http):
    _, dispatcher = workers
    other = {**TINY, "override_settings": {"sd_model_checkpoint": "tiny-sd2v.safetensors"}}
    before = {s.name: s.jobs_done for s in dispatcher.pool.slots}
    assert result(http, submit(http, seed=1, **other))["state"] == "done"
    [loader] = [s for s in dispatcher.pool.slots if s.jobs_done > before[s.name]]
    assert loader.checkpoint == "tiny-sd2v.safetensors"
    for seed in (2, 3):  # both actors are idle each time: the one with the checkpoint gets the job
        assert result(http, submit(http, seed=seed, **other))["state"] == "done"
    assert loader.jobs_done == before[loader.name] + 3
    assert sum(i["loads"] for i in actor_infos(dispatcher).values()) == 3  # sd1 twice, sd2v once


def test_sdapi_jobs_run_on_the_actors_and_answer_as_one_process_does(workers, http, local):
    _, dispatcher = workers
    before = sum(s.jobs_done for s in dispatcher.pool.slots)
    body = {**TINY, "prompt": "a lighthouse", "seed": 77, "batch_size": 2}
    remote, alone = (client.post("/sdapi/v1/txt2img", json=body) for client in (http, local))
    assert remote.status_code == alone.status_code == 200, remote.text
    pixels = [[decode(i).tobytes() for i in answer.json()["images"]] for answer in (remote, alone)]
    assert len(pixels[0]) == 2 and pixels[0] == pixels[1]
    assert json.loads(remote.json()["info"])["infotexts"] == json.loads(alone.json()["info"])["infotexts"]
    assert sum(s.jobs_done for s in dispatcher.pool.slots) == before + 1


def test_progress_and_previews_arrive_as_events(http):
    with http.stream("GET", "/atelier/v1/events") as response:
        _, events = events_of_one_job(response, lambda: submit(http, seed=21, width=64, height=64, steps=3))
    assert [e["type"] for e in events] == ["queued", "started", "progress", "progress", "progress", "done"]
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert all(min(decode(e["preview"]).size) > 0 for e in events if e["type"] == "progress")


def test_interrupt_and_skip_reach_the_actor(workers, http):
    _, dispatcher = workers
    job_id = submit(http, seed=7, **LONG)
    busy_slot(dispatcher, http, job_id)
    assert http.post(f"/atelier/v1/jobs/{job_id}/interrupt").status_code == 200
    body = result(http, job_id)
    assert body["state"] == "interrupted" and body["step"] < LONG["steps"]
    job_id = submit(http, seed=8, n_iter=2, **{**LONG, "steps": 60})
    busy_slot(dispatcher, http, job_id)
    assert http.post(f"/atelier/v1/jobs/{job_id}/skip").status_code == 200
    body = result(http, job_id)  # the first batch was abandoned, the second one ran
    assert body["state"] == "done" and [parse_infotext(t)["Seed"] for t in body["infotexts"]] == ["9"]


def test_a_killed_actors_job_is_retried_on_the_other_and_nothing_is_lost(workers, http, local):
    engine, dispatcher = workers
    two_batches = {**LONG, "steps": 30, "n_iter": 2, "seed": 33}
    job_id = submit(http, **two_batches)
    wait_until(lambda: len(http.get(f"/atelier/v1/jobs/{job_id}").json()["files"]) == 1, 60)
    [victim] = [s for s in dispatcher.pool.slots if s.busy]
    ray.kill(victim.actor)  # during the second batch: the first image is already saved
    body = result(http, job_id)
    assert body["state"] == "done" and body["error"] is None
    expected = local_run(local, **two_batches)
    assert [unnumbered(f) for f in body["files"]] == [unnumbered(f) for f in expected["files"]]  # none twice
    assert [decode(i).tobytes() for i in body["images"]] == [decode(i).tobytes() for i in expected["images"]]
    assert body["infotexts"] == expected["infotexts"]
    assert [s.name for s in dispatcher.pool.slots] != [] and victim not in dispatcher.pool.slots
    assert result(http, submit(http, seed=34, **TINY))["state"] == "done"  # still serving, on one actor


def test_when_the_last_actor_dies_its_job_fails_with_a_reason_and_the_server_stays_up(workers, http):
    engine, dispatcher = workers
    dispatcher.retries = 0
    job_id = submit(http, seed=44, **LONG)
    queued = submit(http, seed=45, **TINY)
    ray.kill(busy_slot(dispatcher, http, job_id).actor)
    body = result(http, job_id)
    assert body["state"] == "failed" and "died" in body["error"]
    late = result(http, queued)
    assert late["state"] == "failed" and "no Ray workers are left" in late["error"]
    assert http.get("/sdapi/v1/progress").status_code == 200
    states = {job["id"]: job["state"] for job in http.get("/atelier/v1/jobs").json()["jobs"]}
    assert all(state in ("done", "failed", "interrupted") for state in states.values())  # none lost or stuck


def test_without_workers_ray_ray_is_not_imported():
    import subprocess
    import sys

    code = ("import sys, webui; webui.main(['--nowebui', '--exit', '--no-download-prompt', "
            "'--disable-all-extensions', '--data-dir', sys.argv[1]]); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(_scratch())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _scratch():
    import tempfile

    return tempfile.mkdtemp(prefix="atelier-noray-")
