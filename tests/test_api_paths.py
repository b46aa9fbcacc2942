"""Every route that takes a file name or a path, on the real server: URL-encoded and double-encoded traversal,
absolute paths, Windows forms (`..\\`, `C:\\`, `\\\\server\\share`), NUL bytes and symlinks out of the folder are
refused with a 4xx, and nothing outside Atelier's folders is read or written."""
from __future__ import annotations

import base64
import http.client as httpclient
import io
import os
import shutil
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

from modules import cmd_args
from modules.extensions import load_extensions, unload_extensions
from tests.test_api_helpers import TINY, b64_png, gradient, make_engine, running_server

SECRET = b"top-secret-bytes"


@pytest.fixture(scope="module")
def world(tiny_dir, tiny_ckpt, tmp_path_factory):
    """A data dir, and beside it an `outside` folder holding things no request may reach."""
    work = tmp_path_factory.mktemp("paths")
    outside = tmp_path_factory.mktemp("outside")
    secret = Image.new("RGB", (8, 8), (1, 2, 3))
    secret.save(outside / "secret.png", pnginfo=None)
    (outside / "secret.txt").write_bytes(SECRET)
    shutil.copy(tiny_ckpt["sd1"], outside / "stolen.safetensors")
    return work, outside


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, world):
    work, outside = world
    eng = make_engine(tiny_dir, policy, work)
    images = eng.paths.outputs_dir / "txt2img-images"
    images.mkdir(parents=True)
    gradient().save(images / "ok.png")
    os.symlink(outside / "secret.png", images / "link.png")
    os.symlink(outside, images / "linkdir")
    eng.extensions = load_extensions(eng, cmd_args.parse(["--nowebui"]))
    yield eng
    unload_extensions(eng)
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine, ["--nowebui"]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as client:
        yield client


def raw_request(url: str, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """The request line exactly as written: no client-side normalising of `..` or re-encoding of `%`."""
    host, port = url.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, target, body=body or None, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def traversal_forms(engine, outside: Path) -> list[str]:
    """Path texts (as they appear after /files/) that aim at the outside folder, in every spelling."""
    up = os.path.relpath(outside, engine.paths.outputs_dir)  # ../../outside-xyz
    target = f"{up}/secret.png"
    return [
        target,
        quote(target, safe=""),  # %2e%2e%2f
        target.replace("..", "%2e%2e"),
        quote(quote(target, safe=""), safe=""),  # double-encoded: %252e%252e%252f
        "/" + str(outside / "secret.png").lstrip("/"),  # absolute
        quote(str(outside / "secret.png"), safe=""),  # %2Ftmp%2F...
        target.replace("/", "\\"),  # ..\..\outside\secret.png
        quote(target.replace("/", "\\"), safe=""),
        "C:\\Windows\\win.ini", "C:/Windows/win.ini", quote("C:\\secret.png", safe=""),
        quote("\\\\server\\share\\secret.png", safe=""), "%5C%5Cserver%5Cshare%5Csecret.png",
        "txt2img-images/ok.png%00.png", "%00", "txt2img-images%00/ok.png",
        "txt2img-images/link.png", "txt2img-images/linkdir/secret.png",  # symlinks out of outputs
        "txt2img-images/linkdir/secret.txt",
    ]


@pytest.mark.parametrize("route", ["files", "thumbnails"])
def test_file_routes_refuse_every_way_out(server, engine, world, route):
    _, outside = world
    status, body = raw_request(server, "GET", f"/atelier/v1/{route}/txt2img-images/ok.png")
    assert status == 200 and body[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")  # the control: a file inside is served
    for form in traversal_forms(engine, outside):
        status, body = raw_request(server, "GET", f"/atelier/v1/{route}/{form}")
        assert 400 <= status < 500, (form, status, body[:200])
        assert SECRET not in body and not body.startswith(b"\x89PNG"), form


def test_windows_forms_are_named_as_such(http):
    response = http.get("/atelier/v1/files/" + quote("..\\..\\secret.png", safe=""))
    assert response.status_code == 403 and "Windows" in response.json()["detail"]


BAD_NAMES = ["../../outside/stolen.safetensors", "..%2f..%2fstolen.safetensors", "..\\..\\stolen.safetensors",
             "C:\\models\\stolen.safetensors", "\\\\server\\share\\stolen.safetensors", "tiny-sd1\x00.safetensors",
             "/etc/passwd"]


def outside_checkpoint(world) -> str:
    return str(world[1] / "stolen.safetensors")


@pytest.mark.parametrize("key", ["sd_model_checkpoint", "sd_vae"])
def test_model_names_never_reach_files_outside_the_model_folders(http, world, key):
    for name in [*BAD_NAMES, outside_checkpoint(world)]:
        response = http.post("/sdapi/v1/txt2img", json={**TINY, "override_settings": {key: name}})
        assert response.status_code == 422 and response.json()["field"] == f"override_settings.{key}", (name,
                                                                                                       response.text)
        response = http.post("/sdapi/v1/options", json={key: name})
        assert response.status_code == 422 and response.json()["field"] == key, (name, response.text)


def test_the_merger_reads_and_writes_only_in_the_model_folders(http, world, engine):
    before = set(world[1].iterdir())
    for name in [*BAD_NAMES, outside_checkpoint(world)]:
        for field in ("primary_model_name", "secondary_model_name", "bake_in_vae"):
            body = {"primary_model_name": "tiny-sd1.safetensors", "secondary_model_name": "tiny-sd1.safetensors",
                    field: name}
            response = http.post("/atelier/v1/merge", json=body)
            assert 400 <= response.status_code < 500, (field, name, response.text)
    for name in ["../../outside/evil", "..\\evil", "C:evil", "\\\\server\\share\\evil", "evil\x00x", "/tmp/evil",
                 ".hidden"]:
        response = http.post("/atelier/v1/merge", json={"primary_model_name": "tiny-sd1.safetensors",
                                                        "secondary_model_name": "tiny-sd1.safetensors",
                                                        "custom_name": name})
        assert response.status_code == 422 and response.json()["field"] == "custom_name", (name, response.text)
    assert set(world[1].iterdir()) == before
    assert not list(engine.paths.data_dir.parent.glob("evil*"))


@pytest.mark.parametrize("key", ["outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples"])
def test_output_folders_set_over_http_stay_inside_the_data_folder(http, engine, world, key):
    outside = world[1]
    for value in [str(outside), str(outside / "sub"), os.path.relpath(outside), "../../x", "/tmp", "C:\\out",
                  "\\\\server\\share", "out\x00put", str(engine.paths.outputs_dir / "txt2img-images" / "linkdir")]:
        response = http.post("/sdapi/v1/options", json={key: value})
        assert response.status_code == 422 and response.json()["field"] == key, (value, response.text)
        response = http.post("/sdapi/v1/txt2img", json={**TINY, "override_settings": {key: value},
                                                        "override_settings_restore_afterwards": False})
        assert response.status_code == 422 and response.json()["field"] == f"override_settings.{key}", value
    assert engine.settings.get(key) in ("", None)
    inside = engine.paths.data_dir / "my-outputs"
    assert http.post("/sdapi/v1/options", json={key: str(inside)}).status_code == 200
    engine.settings.set(key, str(outside))  # set by the artist in Settings: posting it back unchanged is fine
    assert http.post("/sdapi/v1/options", json=http.get("/sdapi/v1/options").json()).status_code == 200
    assert http.post("/sdapi/v1/options", json={key: str(outside / "other")}).status_code == 422
    assert http.post("/sdapi/v1/options", json={key: ""}).status_code == 200
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png", "secret.txt", "stolen.safetensors"]


def zip_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_extension_install_refuses_bad_names_sources_and_archives(http, engine, world, tmp_path):
    user_dir = engine.extensions.manager.user_dir
    source = tmp_path / "ext"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "noop.py").write_text("# nothing\n")
    for name in ["../evil", "..\\evil", "C:\\evil", "\\\\server\\share", "a\x00b", "/tmp/evil", ".."]:
        response = http.post("/atelier/v1/extensions/install", json={"source": str(source), "name": name})
        assert 400 <= response.status_code < 500, (name, response.text)
    for bad_source in ["C:\\Users\\x\\ext", "\\\\server\\share\\ext", str(source) + "\x00", "%2e%2e%2fext",
                       str(world[1] / "nothing-here")]:
        response = http.post("/atelier/v1/extensions/install", json={"source": bad_source, "name": "fine"})
        assert 400 <= response.status_code < 500, (bad_source, response.text)
    for i, members in enumerate([{"../../evil.py": b"x"}, {"/tmp/evil.py": b"x"}, {"a/../../evil.py": b"x"},
                                 {"C:/evil.py": b"x"}]):
        archive = tmp_path / f"slip{i}.zip"
        archive.write_bytes(zip_with(members))
        response = http.post("/atelier/v1/extensions/install", json={"source": str(archive), "name": f"slip{i}"})
        assert response.status_code == 400 and "unsafe path" in response.text, (members, response.text)
    leftovers = [p for p in (user_dir.iterdir() if user_dir.exists() else []) if not p.name.startswith(".")]
    assert leftovers == [] and not list(tmp_path.parent.rglob("evil*")) and not Path("/tmp/evil.py").exists()


def test_extension_routes_by_name_stay_in_the_extensions_folder(server, engine, tmp_path):
    user_dir = engine.extensions.manager.user_dir
    user_dir.mkdir(parents=True, exist_ok=True)
    victim = engine.paths.data_dir / "victim"
    victim.mkdir(exist_ok=True)
    for name in ["%2e%2e", "..%2fvictim", "%2e%2e%2fvictim", "%252e%252e%252fvictim", "..%5cvictim",
                 "C%3a%5cvictim", "%00", "victim%00"]:
        for method, suffix, body in (("DELETE", "", b""), ("POST", "/enabled", b'{"enabled": false}'),
                                     ("POST", "/update", b"")):
            status, answer = raw_request(server, method, f"/atelier/v1/extensions/{name}{suffix}", body)
            assert 400 <= status < 500, (method, name, suffix, status, answer[:200])
    assert victim.is_dir() and engine.paths.data_dir.is_dir()


def test_a_folder_install_copies_symlinks_as_links_never_what_they_point_at(http, engine, world, tmp_path):
    source = tmp_path / "linky"
    (source / "scripts").mkdir(parents=True)
    os.symlink(world[1] / "secret.txt", source / "secret.txt")
    response = http.post("/atelier/v1/extensions/install", json={"source": str(source), "name": "linky"})
    assert response.status_code == 200, response.text
    installed = engine.extensions.manager.user_dir / "linky" / "secret.txt"
    try:
        assert installed.is_symlink()  # the secret's bytes were not copied into Atelier's folders
    finally:
        assert http.delete("/atelier/v1/extensions/linky").status_code == 200
    assert (world[1] / "secret.txt").read_bytes() == SECRET  # uninstalling removed the link, not its target


def test_names_in_requests_are_looked_up_never_opened(http, world):
    for field, route, extra in (("hr_upscaler", "txt2img", {"enable_hr": True}), ("upscaler_1", "extra-single-image",
                                {"image": b64_png(gradient())}), ("script_name", "txt2img", {})):
        for name in BAD_NAMES:
            body = {**TINY, **extra, field: name} if route == "txt2img" else {**extra, field: name}
            response = http.post(f"/sdapi/v1/{route}", json=body)
            assert response.status_code == 422 and response.json()["field"] == field, (field, name, response.text)


def test_controlnet_units_never_open_a_client_path(http, world):
    unit = {"enabled": True, "image": {"path": str(world[1] / "secret.png")}, "module": "none",
            "model": "None"}
    response = http.post("/sdapi/v1/txt2img", json={**TINY, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert 400 <= response.status_code < 500, response.text
    as_base64 = base64.b64encode((world[1] / "secret.png").read_bytes()).decode()
    assert as_base64 not in response.text
