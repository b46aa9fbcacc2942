"""/atelier/v1/extensions on the real server: install from a folder, disable, enable, uninstall; refused when listening."""
import shutil
from pathlib import Path

import httpx
import pytest

from modules import cmd_args
from modules.extensions import load_extensions, unload_extensions
from tests.test_api_helpers import make_engine, running_server

EXAMPLE = Path(__file__).resolve().parent / "example_extension"


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path)
    yield eng
    unload_extensions(eng)
    eng.shutdown()


def test_install_disable_enable_uninstall_through_the_api(engine, tmp_path):
    source = tmp_path / "source" / "example"
    shutil.copytree(EXAMPLE, source)
    argv = ["--nowebui"]
    engine.extensions = load_extensions(engine, cmd_args.parse(argv))
    with running_server(engine, argv) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        installed = http.post("/atelier/v1/extensions/install", json={"source": str(source), "name": "example"})
        assert installed.status_code == 200, installed.text
        assert (engine.paths.data_dir / "extensions" / "example" / "scripts").is_dir()
        names = [e["name"] for e in http.get("/sdapi/v1/extensions").json()]
        assert "example" in names
        off = http.post("/atelier/v1/extensions/example/enabled", json={"enabled": False})
        assert off.status_code == 200 and off.json()["enabled"] is False
        assert "example" in engine.settings.get("disabled_extensions")
        on = http.post("/atelier/v1/extensions/example/enabled", json={"enabled": True})
        assert on.json()["enabled"] is True
        missing = http.post("/atelier/v1/extensions/nope/enabled", json={"enabled": True})
        assert missing.status_code == 404
        assert http.delete("/atelier/v1/extensions/example").status_code == 200
        assert not (engine.paths.data_dir / "extensions" / "example").exists()


def test_install_is_refused_while_listening_without_the_insecure_flag(engine, tmp_path):
    argv = ["--nowebui", "--listen", "--api-auth", "user:pass"]
    engine.extensions = load_extensions(engine, cmd_args.parse(argv))
    with running_server(engine, argv) as (url, _), httpx.Client(base_url=url, timeout=60, auth=("user", "pass")) as http:
        response = http.post("/atelier/v1/extensions/install", json={"source": str(EXAMPLE)})
        assert response.status_code == 403 and "insecure" in response.text


def test_index_listing_and_install_through_the_api(engine, tmp_path):
    from tests.test_ui_extensions_tab import indexed_repo

    _, index_url = indexed_repo(tmp_path)
    argv = ["--nowebui"]
    engine.extensions = load_extensions(engine, cmd_args.parse(argv))
    with running_server(engine, argv) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        unset = http.get("/atelier/v1/extensions/available")
        assert unset.status_code == 400 and "no extension index is set" in unset.json()["detail"]
        listed = http.get("/atelier/v1/extensions/available", params={"index_url": index_url})
        assert listed.status_code == 200, listed.text
        assert [(e["name"], e["installed"]) for e in listed.json()] == [("Indexed <one>", False), ("Elsewhere", False)]
        engine.settings.set("extensions_index_url", index_url, save=False)
        missing = http.post("/atelier/v1/extensions/install-from-index", json={"name": "Nope"})
        assert missing.status_code == 400 and "no entry named 'Nope'" in missing.json()["detail"]
        done = http.post("/atelier/v1/extensions/install-from-index", json={"name": "Indexed <one>"})
        assert done.status_code == 200, done.text
        assert (engine.paths.data_dir / "extensions" / "sd-indexed" / "scripts" / "hello.py").is_file()
        assert http.get("/atelier/v1/extensions/available").json()[0]["installed"] is True


def test_index_reading_is_refused_while_listening_without_the_insecure_flag(engine, tmp_path):
    from tests.test_ui_extensions_tab import indexed_repo

    _, index_url = indexed_repo(tmp_path)
    argv = ["--nowebui", "--listen", "--api-auth", "user:pass"]
    engine.extensions = load_extensions(engine, cmd_args.parse(argv))
    with running_server(engine, argv) as (url, _), httpx.Client(base_url=url, timeout=60, auth=("user", "pass")) as http:
        listed = http.get("/atelier/v1/extensions/available", params={"index_url": index_url})
        assert listed.status_code == 403 and "insecure" in listed.text
        done = http.post("/atelier/v1/extensions/install-from-index", json={"name": "Indexed <one>", "index_url": index_url})
        assert done.status_code == 403
        assert not (engine.paths.data_dir / "extensions" / "sd-indexed").exists()
