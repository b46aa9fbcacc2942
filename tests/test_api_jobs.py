"""/atelier/v1 on the real server: submit, status, result, cancel, events (SSE), batch expand, webhooks, files;
and /sdapi/v1/progress while a job runs."""
from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import http.client as http_client
import io
import json
import os
import threading

import httpx
import pytest
from PIL import Image

from modules.infotext import parse_infotext
from tests.test_api_helpers import TINY, Gate, decode, events_of_one_job, gated_engine, running_server, wait_until


@pytest.fixture(scope="module")
def gate():
    return Gate()


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory, gate):
    with gated_engine(tiny_dir, policy, tmp_path_factory.mktemp("jobs"), gate) as eng:
        yield eng


@pytest.fixture(scope="module")
def base_url(engine):
    with running_server(engine, ["--nowebui"]) as (url, _):
        yield url


@pytest.fixture()
def http(base_url, gate):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client
    gate.open()  # a failed test must not leave the worker held


def submit(http, **fields) -> str:
    response = http.post("/atelier/v1/txt2img", json={**TINY, **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def result(http, job_id: str) -> dict:
    response = http.get(f"/atelier/v1/jobs/{job_id}/result", params={"wait": 60})
    assert response.status_code == 200, response.text
    return response.json()


def test_submit_answers_at_once_and_the_result_has_images_infotexts_and_files(http):
    job_id = submit(http, prompt="a boat", seed=11, batch_size=2)
    status = http.get(f"/atelier/v1/jobs/{job_id}").json()
    assert status["id"] == job_id and status["state"] in ("queued", "running", "done")
    body = result(http, job_id)
    assert body["state"] == "done" and body["error"] is None
    assert [decode(i).size for i in body["images"]] == [(128, 64), (64, 64), (64, 64)]  # saved, so the grid too
    assert [parse_infotext(t)["Seed"] for t in body["infotexts"]] == ["11", "11", "12"]
    assert body["info"]["all_seeds"] == [11, 12] and body["parameters"]["prompt"] == "a boat"
    assert len(body["files"]) == 2
    png = http.get(f"/atelier/v1/files/{body['files'][0]}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert parse_infotext(decode_bytes(png.content).info["parameters"])["Seed"] == "11"
    thumb = http.get(f"/atelier/v1/thumbnails/{body['files'][0]}", params={"size": 32})
    assert thumb.status_code == 200 and decode_bytes(thumb.content).size == (32, 32)


def decode_bytes(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_cancel_a_queued_job_and_progress_of_the_running_one(http, gate):
    gate.arm()
    running = submit(http, seed=1, steps=3)
    assert gate.entered.wait(60)
    queued = submit(http, seed=2)
    assert http.get(f"/atelier/v1/jobs/{queued}").json()["position"] == 1
    progress = http.get("/sdapi/v1/progress").json()
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_step"] == 1
    assert progress["state"]["sampling_steps"] == 3 and 0 < progress["progress"] < 1
    assert min(decode(progress["current_image"]).size) > 0  # the live preview (a cheap latent decode)
    assert http.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    listing = http.get("/atelier/v1/jobs", params={"state": "queued"}).json()
    assert [job["id"] for job in listing["jobs"]] == [queued] and listing["running"] == running

    cancelled = http.post(f"/atelier/v1/jobs/{queued}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    refused = http.post(f"/atelier/v1/jobs/{running}/cancel")
    assert refused.status_code == 409 and refused.json()["state"] == "running"
    assert http.get(f"/atelier/v1/jobs/{running}/result").status_code == 409  # not finished yet
    gate.open()
    assert result(http, running)["state"] == "done"
    assert result(http, queued)["state"] == "cancelled" and result(http, queued)["images"] == []


def test_interrupt_keeps_what_finished(http, gate):
    gate.arm()
    job_id = submit(http, seed=5, steps=3, n_iter=2)
    assert gate.entered.wait(60)
    assert http.post(f"/atelier/v1/jobs/{job_id}/interrupt").status_code == 200
    gate.open()
    body = result(http, job_id)
    assert body["state"] == "interrupted"


def read_events(response, until, job_id=None):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if job_id is None or event.get("job_id") == job_id:
                events.append(event)
                if until(event):
                    return events
    return events


def test_events_arrive_in_order_with_previews(base_url, http):
    with httpx.Client(base_url=base_url, timeout=60) as stream_client:
        with stream_client.stream("GET", "/atelier/v1/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            job_id, events = events_of_one_job(response, lambda: submit(http, seed=21, steps=3))
    types = [e["type"] for e in events]
    assert types == ["queued", "started", "progress", "progress", "progress", "done"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert all(min(decode(e["preview"]).size) > 0 for e in events if e["type"] == "progress")
    assert events[-1]["result_url"] == f"/atelier/v1/jobs/{job_id}/result"


def test_job_event_stream_starts_with_state_and_ends_with_the_job(http, gate):
    gate.arm()
    job_id = submit(http, seed=31, steps=2)
    assert gate.entered.wait(60)
    with http.stream("GET", f"/atelier/v1/jobs/{job_id}/events") as response:
        threading.Timer(0.3, gate.open).start()
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[0]["type"] == "state" and events[0]["state"] == "running"
    assert events[-1]["type"] == "done" and [e["type"] for e in events[1:-1]] == ["progress"] * (len(events) - 2)
    late = http.get(f"/atelier/v1/jobs/{job_id}/events").text  # after the end: state, then its last event
    assert "event: state" in late and "event: done" in late


def test_batch_expands_every_combination_in_order(http):
    response = http.post("/atelier/v1/batch", json={"base": {**TINY, "negative_prompt": "n"},
                                                     "expand": {"seed": [1, 2], "prompt": ["a", "b"]}})
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    assert response.json()["count"] == 4 and len(set(ids)) == 4
    combos = []
    for job_id in ids:
        text = parse_infotext(result(http, job_id)["infotexts"][0])
        combos.append((text["Seed"], text["Prompt"], text["Negative prompt"]))
    assert combos == [("1", "a", "n"), ("1", "b", "n"), ("2", "a", "n"), ("2", "b", "n")]


@pytest.mark.parametrize("body, field", [
    ({"expand": {"nope": [1]}}, "expand.nope"),
    ({"expand": {"steps": ["many"]}}, "expand.steps"),
    ({"expand": {"seed": []}}, "expand.seed"),
    ({"expand": {"seed": list(range(40)), "prompt": [str(i) for i in range(40)]}}, "expand"),
    ({"base": {"width": 100000}, "expand": {"seed": [1]}}, "base.width"),
    ({"base": {"sampler_name": "nope"}}, "base.sampler_name"),
    ({"expand": {"sampler_name": ["Euler", "nope"]}}, "expand.sampler_name"),
    ({"type": "img2img", "base": {"init_images": ["***"]}}, "base.init_images.0"),
])
def test_a_bad_batch_queues_nothing_and_names_the_field(http, body, field):
    before = len(http.get("/atelier/v1/jobs").json()["jobs"])
    response = http.post("/atelier/v1/batch", json={**body, "base": {**TINY, **body.get("base", {})}})
    assert response.status_code == 422 and response.json()["field"] == field, response.text
    assert len(http.get("/atelier/v1/jobs").json()["jobs"]) == before


class WebhookReceiver(BaseHTTPRequestHandler):
    received: list = []
    arrived = threading.Event()

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        WebhookReceiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()
        WebhookReceiver.arrived.set()

    def log_message(self, *args):
        pass


def test_webhook_is_called_when_the_job_ends(http):
    server = ThreadingHTTPServer(("127.0.0.1", 0), WebhookReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = submit(http, seed=41, webhook=url)
        assert WebhookReceiver.arrived.wait(60)
        [payload] = WebhookReceiver.received
        assert payload["id"] == job_id and payload["state"] == "done"
        assert parse_infotext(payload["infotexts"][0])["Seed"] == "41"
        wait_until(lambda: http.get(f"/atelier/v1/jobs/{job_id}").json().get("webhook") == "sent 204")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    bad = http.post("/atelier/v1/txt2img", json={**TINY, "webhook": "ftp://example.com/x"})
    assert bad.status_code == 422 and bad.json()["field"] == "webhook"


def test_sdapi_jobs_share_the_queue_and_show_in_the_listing(http):
    assert http.post("/sdapi/v1/txt2img", json={"seed": 61, **TINY}).status_code == 200
    jobs = http.get("/atelier/v1/jobs").json()["jobs"]
    assert any(job["source"] == "sdapi" and job["seeds"] == [61] for job in jobs)


def test_unknown_job_is_404_naming_the_id(http):
    for method, path in [("GET", "/atelier/v1/jobs/nope"), ("GET", "/atelier/v1/jobs/nope/result"),
                         ("POST", "/atelier/v1/jobs/nope/cancel"), ("GET", "/atelier/v1/jobs/nope/events")]:
        response = http.request(method, path)
        assert response.status_code == 404 and response.json()["field"] == "id", path


def test_files_are_served_only_from_the_outputs(base_url, http, engine):
    outputs = engine.paths.outputs_dir
    outputs.mkdir(parents=True, exist_ok=True)
    secret = outputs.parent / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    (outputs / "notes.txt").write_text("not an image")
    link = outputs / "link.png"
    if not link.exists():
        os.symlink(secret, link)
    for path, status in [("%2e%2e/secret.png", 403), (str(secret), 403), ("link.png", 403), ("notes.txt", 403),
                         ("missing.png", 404), ("%2e%2e/%2e%2e/etc/passwd", 403), ("..%2fsecret.png", 403)]:
        response = http.get(f"/atelier/v1/files/{path}")
        assert response.status_code == status, (path, response.text)
        assert http.get(f"/atelier/v1/thumbnails/{path}").status_code == status
    host, port = base_url.rsplit("//", 1)[1].split(":")
    raw = http_client.HTTPConnection(host, int(port), timeout=30)  # sends the path exactly, `..` and all
    try:
        raw.request("GET", "/atelier/v1/files/../secret.png")
        assert raw.getresponse().status == 403
    finally:
        raw.close()
