"""Per-client limits (modules/api/client_limits.py): --max-queued-per-client and --api-rate-limit, a 429 with
Retry-After naming the limit, clients (auth users) counted apart, slots freed when jobs end."""
from __future__ import annotations


import httpx
import pytest

from modules.api.client_limits import ClientLimits, TooManyRequests
from tests.test_api_helpers import TINY, Gate, b64_png, gated_engine, gradient, running_server, wait_until

ALICE, BOB = ("alice", "pw-a"), ("bob", "pw-b")
AUTH = f"{ALICE[0]}:{ALICE[1]},{BOB[0]}:{BOB[1]}"


@pytest.fixture(scope="module")
def gate():
    return Gate()


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory, gate):
    with gated_engine(tiny_dir, policy, tmp_path_factory.mktemp("client-limits"), gate) as eng:
        yield eng


def held(**fields) -> dict:
    return {**TINY, "steps": 2, **fields}  # two steps: the gate holds the job at its second


def assert_429(response: httpx.Response, limit: str, value: int) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["error"] == "TooManyRequests" and body["limit"] == limit and body["max"] == value, body


def test_a_client_over_its_queue_limit_gets_429_until_a_job_ends(engine, gate):
    argv = ["--nowebui", "--api-auth", AUTH, "--max-queued-per-client", "2"]
    with running_server(engine, argv) as (url, app), httpx.Client(base_url=url, timeout=120) as http:
        gate.arm()
        first = http.post("/atelier/v1/txt2img", json=held(seed=1), auth=ALICE)
        second = http.post("/atelier/v1/txt2img", json=held(seed=2), auth=ALICE)
        assert first.status_code == second.status_code == 202
        assert_429(http.post("/atelier/v1/txt2img", json=held(seed=3), auth=ALICE), "--max-queued-per-client", 2)
        assert_429(http.post("/sdapi/v1/txt2img", json=held(seed=3), auth=ALICE), "--max-queued-per-client", 2)
        image = b64_png(gradient())
        assert_429(http.post("/sdapi/v1/extra-single-image", json={"image": image}, auth=ALICE),
                   "--max-queued-per-client", 2)
        assert_429(http.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": image, "name": "a"}]},
                             auth=ALICE), "--max-queued-per-client", 2)
        # Bob is another client: his own two slots. A batch that would pass them queues nothing at all.
        assert http.post("/atelier/v1/txt2img", json=held(seed=4), auth=BOB).status_code == 202
        queued = len(engine.queue.list())
        batch = http.post("/atelier/v1/batch", json={"base": held(), "expand": {"seed": [5, 6]}}, auth=BOB)
        assert_429(batch, "--max-queued-per-client", 2)
        assert len(engine.queue.list()) == queued
        gate.open()
        limits = app.state.api.limits
        wait_until(lambda: limits.active("user:alice") == 0 and limits.active("user:bob") == 0)
        again = http.post("/atelier/v1/txt2img", json=held(seed=7), auth=ALICE)
        assert again.status_code == 202, again.text
        done = http.get(f"/atelier/v1/jobs/{again.json()['id']}/result", params={"wait": 60}, auth=ALICE)
        assert done.status_code == 200
        assert http.post("/sdapi/v1/txt2img", json=held(seed=8), auth=ALICE).status_code == 200
        assert http.post("/sdapi/v1/extra-single-image", json={"image": image}, auth=ALICE).status_code == 200
        wait_until(lambda: limits.active("user:alice") == 0)  # every finished job gave its slot back


def test_the_rate_limit_counts_submissions_per_minute_per_client(engine, gate):
    gate.open()
    argv = ["--nowebui", "--api-auth", AUTH, "--api-rate-limit", "2"]
    with running_server(engine, argv) as (url, app), httpx.Client(base_url=url, timeout=120) as http:
        now = [1000.0]
        app.state.api.limits.clock = lambda: now[0]  # no sleeping for a minute
        assert http.post("/atelier/v1/txt2img", json=TINY, auth=ALICE).status_code == 202
        now[0] += 20
        assert http.post("/sdapi/v1/txt2img", json=TINY, auth=ALICE).status_code == 200
        now[0] += 10
        refused = http.post("/atelier/v1/txt2img", json=TINY, auth=ALICE)
        assert_429(refused, "--api-rate-limit", 2)
        assert refused.headers["Retry-After"] == "30"  # the first submission leaves the window in 30 s
        assert http.post("/atelier/v1/txt2img", json=TINY, auth=BOB).status_code == 202  # counted apart
        now[0] += 30
        assert http.post("/atelier/v1/txt2img", json=TINY, auth=ALICE).status_code == 202


def test_without_auth_the_client_is_its_address_and_limits_are_off_by_default(engine, gate):
    gate.open()
    with running_server(engine, ["--nowebui"]) as (url, app), httpx.Client(base_url=url, timeout=120) as http:
        limits = app.state.api.limits
        assert limits.max_queued == 0 and limits.per_minute == 0
        seen = []
        real_reserve = limits.reserve
        limits.reserve = lambda client, jobs=1: (seen.append(client), real_reserve(client, jobs))[1]
        assert http.post("/atelier/v1/txt2img", json=TINY).status_code == 202
        assert seen == ["ip:127.0.0.1"]


def test_client_limits_on_their_own():
    now = [0.0]
    limits = ClientLimits(max_queued=1, per_minute=0, clock=lambda: now[0])
    limits.reserve("a")
    with pytest.raises(TooManyRequests) as caught:
        limits.reserve("a")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"]
    limits.reserve("b")
    limits.release("a")
    limits.reserve("a")
    with pytest.raises(TooManyRequests):
        with limits.running("a"):
            pass
    limits.release("a")
    with limits.running("a"):
        assert limits.active("a") == 1
    assert limits.active("a") == 0
