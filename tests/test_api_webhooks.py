"""Webhook destinations (SSRF guard, modules/api/webhook_policy.py): what is refused with and without --listen,
--webhook-allow by host and CIDR, the check again at call time on the address actually connected to, redirects
never followed, and jobs whose webhook reaches a local server when allowed."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from modules.api.webhook_policy import WebhookPolicy, WebhookRefused, parse_allow_list, post_json
from modules.errors import ValidationError
from tests.test_api_helpers import TINY, make_engine, running_server, wait_until

LOCAL = ["127.0.0.1", "10.0.0.5", "192.168.1.2", "172.16.0.1", "::1", "0.0.0.0", "224.0.0.1", "240.0.0.1",
         "::ffff:127.0.0.1", "fc00::1", "100.64.0.1"]
LINK_LOCAL = ["169.254.169.254", "169.254.1.1", "fe80::1", "fd00:ec2::254", "100.100.100.200"]


def make_policy(listening: bool, allow: str = "", answers: dict[str, list[str]] | None = None) -> WebhookPolicy:
    """A policy whose resolver answers from `answers` (names) or returns an IP literal as itself."""
    hosts, networks = parse_allow_list(allow)
    table = answers or {}
    return WebhookPolicy(listening, hosts, networks, resolver=lambda host, port: table.get(host, [host]))


def url_of(address: str) -> str:
    return f"http://[{address}]:9/hook" if ":" in address else f"http://{address}:9/hook"


@pytest.mark.parametrize("listening", [False, True])
def test_link_local_and_cloud_metadata_are_always_refused(listening):
    for address in LINK_LOCAL:
        with pytest.raises(ValidationError) as caught:
            make_policy(listening).check(url_of(address))
        assert caught.value.field == "webhook" and "link-local" in caught.value.reason, address


def test_without_listen_local_addresses_are_allowed_for_local_bots():
    for address in LOCAL:
        assert make_policy(False).check(url_of(address)) == url_of(address)


def test_with_listen_local_private_and_special_addresses_are_refused():
    for address in LOCAL:
        with pytest.raises(ValidationError) as caught:
            make_policy(True).check(url_of(address), "base.webhook")
        assert caught.value.field == "base.webhook" and "--webhook-allow" in caught.value.reason, address
    assert make_policy(True).check("http://93.184.216.34/hook")  # a public address is fine
    named = make_policy(True, answers={"intranet.example": ["10.1.2.3"]})
    with pytest.raises(ValidationError, match="private"):
        named.check("https://intranet.example/hook")  # names are judged by what they resolve to


def test_the_allow_list_takes_host_names_ips_and_cidrs():
    answers = {"bot.example.com": ["10.0.0.7"], "other.example.com": ["10.0.0.7"], "localhost": ["127.0.0.1"]}
    allowing = make_policy(True, "localhost,10.20.0.0/16, bot.example.com ,169.254.169.254", answers)
    assert allowing.check("http://bot.example.com:8080/hook")  # by name
    assert allowing.check("http://localhost:5000/x")
    assert allowing.check("http://10.20.3.4/x")  # by CIDR
    assert allowing.check("http://169.254.169.254/x")  # named explicitly: the artist's choice
    for refused in ("http://other.example.com/x", "http://10.21.0.1/x", "http://127.0.0.1/x", "http://169.254.1.1/"):
        with pytest.raises(ValidationError):
            allowing.check(refused)


def test_bad_urls_and_names_that_do_not_resolve_are_422():
    for url in ("ftp://example.com/x", "http:///x", "http://example.com:99999/x", "file:///etc/passwd"):
        with pytest.raises(ValidationError, match="http"):
            make_policy(False).check(url)

    def failing(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(ValidationError, match="does not resolve"):
        WebhookPolicy(resolver=failing).check("http://nowhere.invalid/x")


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what it gets and answers with `status` (and `location`)."""

    def __init__(self, status: int = 204, location: str | None = None):
        self.received, self.arrived = [], threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.path, self.headers["Host"], json.loads(body)))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.arrived.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_the_call_goes_to_the_checked_address_with_the_urls_host():
    with Receiver() as receiver:
        pinned = make_policy(False, answers={"hook.test": ["127.0.0.1"]})  # a name no real DNS knows
        status = post_json(pinned, f"http://hook.test:{receiver.port}/done?x=1", b'{"ok": 1}', 10)
        assert status == "sent 204"
        assert receiver.received == [("/done?x=1", f"hook.test:{receiver.port}", {"ok": 1})]


def test_the_call_is_checked_again_when_dns_changes_its_answer():
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public at submit, loopback at call time
    rebinding = WebhookPolicy(True, resolver=lambda host, port: next(answers))
    url = "http://rebind.test/hook"
    assert rebinding.check(url) == url
    with pytest.raises(WebhookRefused, match="loopback"):
        post_json(rebinding, url, b"{}", 10)


def test_redirects_are_not_followed():
    with Receiver() as inside, Receiver(302, None) as redirecting:
        redirecting_location = f"http://127.0.0.1:{inside.port}/internal"
        redirecting.server.RequestHandlerClass.do_POST.__globals__  # the handler is built per Receiver
        with Receiver(302, redirecting_location) as outside:
            with pytest.raises(WebhookRefused, match="302.*not followed"):
                post_json(make_policy(False), f"http://127.0.0.1:{outside.port}/hook", b"{}", 10)
            assert len(outside.received) == 1
        assert inside.received == []  # the redirect's target was never called


# -- through the real server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("webhooks"))
    yield eng
    eng.shutdown()


def test_with_listen_a_loopback_webhook_is_422_naming_the_field(engine):
    with running_server(engine, ["--nowebui", "--listen"]) as (url, _):
        with httpx.Client(base_url=url, timeout=120) as http:
            bad = http.post("/atelier/v1/txt2img", json={**TINY, "webhook": "http://127.0.0.1:9/hook"})
            assert bad.status_code == 422, bad.text
            assert bad.json()["field"] == "webhook" and "loopback" in bad.json()["detail"]
            batch = http.post("/atelier/v1/batch", json={"base": {**TINY, "webhook": "http://10.0.0.1/x"},
                                                          "expand": {"seed": [1, 2]}})
            assert batch.status_code == 422 and batch.json()["field"] == "base.webhook"
            metadata = http.post("/atelier/v1/txt2img", json={**TINY, "webhook": "http://169.254.169.254/x"})
            assert metadata.status_code == 422 and "link-local" in metadata.json()["detail"]


def test_an_allowed_local_webhook_is_called_when_the_job_ends(engine):
    argv = ["--nowebui", "--listen", "--webhook-allow", "localhost,127.0.0.0/8"]
    with running_server(engine, argv) as (url, _), Receiver() as receiver:
        with httpx.Client(base_url=url, timeout=120) as http:
            hook = f"http://127.0.0.1:{receiver.port}/done"
            response = http.post("/atelier/v1/txt2img", json={**TINY, "seed": 7, "webhook": hook})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert receiver.arrived.wait(60)
            [(path, _, payload)] = receiver.received
            assert path == "/done" and payload["id"] == job_id and payload["state"] == "done"
            wait_until(lambda: http.get(f"/atelier/v1/jobs/{job_id}").json().get("webhook") == "sent 204")
