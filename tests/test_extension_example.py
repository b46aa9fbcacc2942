"""The example extension of docs/extensions.md (tests/example_extension) works as the document says."""
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules import extension_api, extension_callbacks
from modules.extensions import ExtensionManager, load_extensions
from modules.jobs import JobState
from modules.settings import OPTIONS
from tests.extension_helpers import EXAMPLE_EXTENSION, close, make_engine, request


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path)
    manager = ExtensionManager(eng.paths, eng.settings, builtin_dir=tmp_path / "none", user_dir=tmp_path / "ext")
    manager.install(str(EXAMPLE_EXTENSION), name="infotext-note")  # as a user would, from a folder
    load_extensions(eng, manager=manager)
    yield eng
    close(eng)


def test_note_from_the_request_goes_into_the_infotext(engine):
    job = engine.generate(request(alwayson_scripts={"infotext note": {"args": {"text": "first light"}}}),
                          timeout=120)
    assert job.state == JobState.done, job.error
    assert ", Note: first light, " in job.result.infotexts[0]


def test_setting_gives_the_default_note(engine):
    assert OPTIONS["infotext_note_default"].section == "Infotext note"
    assert extension_api.setting_owners["infotext_note_default"] == "infotext-note"
    assert "Note:" not in engine.generate(request(), timeout=120).result.infotexts[0]
    engine.settings.set("infotext_note_default", "from settings")
    assert ", Note: from settings, " in engine.generate(request(), timeout=120).result.infotexts[0]


def test_route_and_script_info(engine):
    engine.generate(request(alwayson_scripts={"infotext note": {"args": ["via list"]}}), timeout=120)
    app = FastAPI()
    extension_callbacks.run_app_started(app)
    assert TestClient(app).get("/example-extension/v1/notes").json() == {"notes": ["via list"]}
    [info] = [i for i in engine.scripts.script_info() if not i["is_img2img"]]
    assert info == {"name": "infotext note", "is_alwayson": True, "is_img2img": False,
                    "args": [{"label": "Note", "value": "", "minimum": None, "maximum": None, "step": None,
                              "choices": None}]}


def test_api_version_is_declared():
    assert extension_api.API_VERSION == "1.3"
    assert set(extension_api.__all__) <= set(dir(extension_api))
