"""--api-auth: HTTP Basic on every API route (docs, openapi, progress, events and file routes included);
CORS only when asked for; the --listen warning."""
from __future__ import annotations

import base64
import logging
import re

import httpx
import pytest
from starlette.routing import Mount

from modules import cmd_args
from modules.api.auth import check_basic, listen_warning, parse_credentials
from modules.api.server import create_app
from tests.test_api_helpers import make_engine, running_server

GOOD, OTHER = ("alice", "s3cret:with:colons"), ("bob", "pässword")
AUTH = f"{GOOD[0]}:{GOOD[1]},{OTHER[0]}:{OTHER[1]}"


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("auth"))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine, ["--nowebui", "--api-auth", AUTH]) as (url, app):
        yield url, app


def concrete(path: str) -> str:
    return re.sub(r"{[^}]+}", "x", path)


def every_route(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        assert not isinstance(route, Mount), "a mounted app would need its own check"
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            found.append((method, concrete(route.path)))
    return found


def call(client: httpx.Client, method: str, path: str, auth=None) -> int:
    with client.stream(method, path, auth=auth) as response:  # streams: the events routes never end
        return response.status_code


def test_every_route_needs_the_password(server):
    url, app = server
    routes = every_route(app)
    paths = {path for _, path in routes}
    assert {"/docs", "/openapi.json", "/sdapi/v1/progress", "/sdapi/v1/txt2img", "/atelier/v1/events",
            "/atelier/v1/files/x", "/atelier/v1/thumbnails/x", "/atelier/v1/jobs/x/result"} <= paths
    with httpx.Client(base_url=url, timeout=60) as client:
        for method, path in routes:
            assert call(client, method, path) == 401, (method, path)
            assert call(client, method, path, auth=(GOOD[0], "wrong")) == 401, (method, path)
            assert call(client, method, path, auth=("mallory", GOOD[1])) == 401, (method, path)
            assert call(client, method, path, auth=GOOD) != 401, (method, path)
            assert call(client, method, path, auth=OTHER) != 401, (method, path)
        unknown = client.get("/sdapi/v1/no-such-route")
        assert unknown.status_code == 401 and unknown.headers["www-authenticate"].startswith("Basic")
        assert client.get("/sdapi/v1/samplers", auth=GOOD).json()[0]["name"] == "DPM++ 2M"


def test_cmd_flags_never_show_the_password(server):
    url, _ = server
    flags = httpx.get(f"{url}/sdapi/v1/cmd-flags", auth=GOOD).json()
    assert flags["api_auth"] == "<hidden>" and GOOD[1] not in str(flags)


def test_beside_the_ui_the_api_and_docs_are_protected_but_the_ui_is_not(engine, monkeypatch):
    import gradio as gr

    import modules.ui

    def tiny_ui(engine, args):  # the API is under test here, not the UI
        with gr.Blocks() as blocks:
            gr.Markdown("ui")
        return blocks

    monkeypatch.setattr(modules.ui, "build_ui", tiny_ui)
    with running_server(engine, ["--api", "--api-auth", AUTH]) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as client:
            for path in ("/sdapi/v1/samplers", "/atelier/v1/jobs", "/docs", "/openapi.json", "/sdapi/v1/progress"):
                assert client.get(path).status_code == 401, path
                assert client.get(path, auth=GOOD).status_code == 200, path
            assert client.get("/").status_code == 200  # the web UI has its own login (--gradio-auth)


def test_cors_only_when_asked(engine):
    origin = "http://ok.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with running_server(engine, ["--nowebui", "--api-auth", AUTH, "--cors-allow-origins", origin]) as (url, _):
        response = httpx.options(f"{url}/sdapi/v1/txt2img", headers=preflight)
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
        response = httpx.get(f"{url}/sdapi/v1/samplers", headers={"Origin": origin}, auth=GOOD)
        assert response.headers["access-control-allow-origin"] == origin
        refused = httpx.options(f"{url}/sdapi/v1/txt2img", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in refused.headers
    with running_server(engine, ["--nowebui"]) as (url, _):
        response = httpx.get(f"{url}/sdapi/v1/samplers", headers={"Origin": origin})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_check_basic_accepts_only_exact_credentials():
    creds = parse_credentials(AUTH)
    assert creds == {"alice": "s3cret:with:colons", "bob": "pässword"}
    assert check_basic(basic("alice:s3cret:with:colons"), creds)
    assert check_basic(basic("bob:pässword"), creds)
    for header in (None, "", "Bearer abc", "Basic", "Basic !!!", basic("alice"), basic("alice:s3cret"),
                   basic("bob:s3cret:with:colons"), basic(":"), basic("ALICE:s3cret:with:colons")):
        assert not check_basic(header, creds), header


def test_bad_api_auth_flag_is_refused():
    for value in ("nocolon", "user:", ":pass", "a:b,,c:d"):
        with pytest.raises(SystemExit):
            cmd_args.parse(["--api-auth", value])


def test_listen_without_auth_warns():
    assert "WITHOUT A PASSWORD" in listen_warning(cmd_args.parse(["--listen", "--nowebui"]))
    assert "HTTP API" in listen_warning(cmd_args.parse(["--listen", "--api"]))
    assert listen_warning(cmd_args.parse(["--listen", "--nowebui", "--api-auth", "a:b"])) is None
    assert listen_warning(cmd_args.parse(["--nowebui"])) is None


def test_no_auth_flag_means_no_password(engine):
    app = create_app(engine, cmd_args.parse(["--nowebui"]))
    with running_server(engine, [], app=app) as (url, _):
        assert httpx.get(f"{url}/sdapi/v1/samplers").status_code == 200
        assert httpx.get(f"{url}/docs").status_code == 200


def test_api_log_writes_one_line_per_request(engine, caplog):
    with caplog.at_level(logging.INFO, logger="atelier.api"):
        with running_server(engine, ["--nowebui", "--api-log"]) as (url, _):
            assert httpx.get(f"{url}/sdapi/v1/samplers").status_code == 200
            assert httpx.post(f"{url}/sdapi/v1/txt2img", json={"steps": "x"}).status_code == 422
    lines = [r.getMessage() for r in caplog.records if r.name == "atelier.api"]
    assert any(line.startswith("API GET /sdapi/v1/samplers 200 127.0.0.1") for line in lines), lines
    assert any(line.startswith("API POST /sdapi/v1/txt2img 422") for line in lines), lines


def test_gradio_auth_covers_every_ui_route_and_auth_file_covers_both(engine, monkeypatch, tmp_path):
    import gradio as gr
    from starlette.routing import Mount

    import modules.ui

    def tiny_ui(engine, args):  # Gradio's own routes are under test, whatever the page holds
        with gr.Blocks() as blocks:
            gr.Markdown("ui")
        return blocks

    monkeypatch.setattr(modules.ui, "build_ui", tiny_ui)
    users = tmp_path / "users.txt"
    users.write_text("# studio logins\nfile_user:file:pass\n", encoding="utf-8")
    with running_server(engine, ["--api", "--gradio-auth", "ui:secret", "--auth-file", str(users)]) as (url, app):
        from modules.api.auth import is_api_path

        mounted = {concrete(r.path) for m in app.routes if isinstance(m, Mount) for r in m.routes if hasattr(r, "path")}
        extra = {"/", "/config", "/gradio_api/info", "/file=x", "/internal/ping"}
        ui_paths = sorted(p for p in mounted | extra if not is_api_path(p))  # the API's own paths win at the top
        assert len(ui_paths) > 10  # Gradio's queue, upload, file and config routes are all here
        with httpx.Client(base_url=url, timeout=60) as client:
            for path in ui_paths:
                assert call(client, "GET", path) == 401, path
                assert call(client, "GET", path, auth=("ui", "wrong")) == 401, path
                assert call(client, "GET", path, auth=("ui", "secret")) != 401, path
                assert call(client, "GET", path, auth=("file_user", "file:pass")) != 401, path
            # --auth-file also guards the API; --gradio-auth's users are the UI's only.
            assert client.get("/sdapi/v1/samplers").status_code == 401
            assert client.get("/sdapi/v1/samplers", auth=("file_user", "file:pass")).status_code == 200
            assert client.get("/sdapi/v1/samplers", auth=("ui", "secret")).status_code == 401


def test_cross_site_posts_from_browsers_are_refused(engine):
    with running_server(engine, ["--nowebui", "--cors-allow-origins", "http://studio.local:3000"]) as (url, _):
        host = url.split("://", 1)[1]
        with httpx.Client(base_url=url, timeout=60) as client:
            body = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
            evil = client.post("/sdapi/v1/interrupt", headers={"Origin": "http://evil.example"})
            assert evil.status_code == 403 and "evil.example" in evil.json()["detail"]
            assert client.post("/sdapi/v1/options", json={}, headers={"Origin": "http://evil.example"}).status_code == 403
            assert client.post("/sdapi/v1/interrupt", headers={"Origin": f"http://{host}"}).status_code == 200
            assert client.post("/sdapi/v1/interrupt", headers={"Origin": "http://studio.local:3000"}).status_code == 200
            assert client.post("/sdapi/v1/interrupt").status_code == 200  # scripts send no Origin
            assert client.get("/sdapi/v1/samplers", headers={"Origin": "http://evil.example"}).status_code == 200
            assert client.post("/sdapi/v1/txt2img", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
