"""The ControlNet built-in's HTTP side against the real server, driven by the `webuiapi` client's ControlNet
helpers as existing sd-webui-controlnet clients drive it."""
import json

import cv2
import httpx
import numpy as np
import pytest
import webuiapi

from modules.infotext import parse_infotext
from tests.builtin_helpers import close
from tests.test_api_helpers import b64_png, decode, running_server
from tests.test_builtin_controlnet import control_image, controlnet_engine
from tests.tiny_models import save_tiny_controlnet


@pytest.fixture(scope="module")
def server(tiny_dir, policy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ControlNet")
    save_tiny_controlnet(folder / "tiny-canny.safetensors", "sd1", seed=1)
    save_tiny_controlnet(folder / "tiny-depth.safetensors", "sd1", seed=2)
    (folder / "annotators").mkdir()
    save_tiny_controlnet(folder / "annotators" / "not-a-model.safetensors", "sd1")  # never listed
    engine = controlnet_engine(tiny_dir, policy, tmp_path_factory.mktemp("cn-api"), folder)
    with running_server(engine, ["--nowebui"]) as (url, _):
        yield url
    close(engine)


@pytest.fixture(scope="module")
def client(server) -> webuiapi.WebUIApi:
    host, port = server.rsplit("//", 1)[1].split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=3)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def test_lists_have_sd_webui_controlnets_shapes(client, http):
    assert client.controlnet_version() == 2
    models = client.controlnet_model_list()
    assert [m.rsplit(" [", 1)[0] for m in models] == ["tiny-canny", "tiny-depth"]
    assert all(len(m.rsplit("[", 1)[1]) == 9 and m.endswith("]") for m in models)  # name [8 hex digits]
    modules = client.controlnet_module_list()
    assert modules[0] == "none" and {"canny", "invert", "binary", "tile_resample", "inpaint_only"} <= set(modules)
    body = http.get("/controlnet/module_list").json()
    assert body["module_detail"]["canny"]["sliders"][0]["name"] == "Preprocessor Resolution"
    assert "unavailable" in body["module_detail"]["openpose"]
    types = http.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["model_list"] == ["None", models[0]] and types["Canny"]["default_option"] == "canny"
    assert types["Depth"]["default_model"] == models[1]
    assert http.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_detect_runs_the_preprocessor(client, http):
    image = control_image()
    result = client.controlnet_detect([image], module="canny", processor_res=64, threshold_a=50, threshold_b=150)
    assert result.info == "Success"  # webuiapi decodes {"images": [...], "info": ...} into a result
    edges = np.asarray(result.image.convert("L"))
    assert np.array_equal(edges, cv2.Canny(np.asarray(image), 50, 150)) and edges.any()
    body = {"controlnet_module": "invert", "controlnet_input_images": [b64_png(image)], "controlnet_processor_res": 64}
    inverted = np.asarray(decode(http.post("/controlnet/detect", json=body).json()["images"][0]))
    assert np.array_equal(inverted, 255 - np.asarray(image))
    missing = http.post("/controlnet/detect", json={**body, "controlnet_module": "depth_midas"})
    assert missing.status_code == 422 and "dpt_hybrid-midas-501f0c75.pt" in missing.json()["detail"]
    assert http.post("/controlnet/detect", json={"controlnet_module": "canny"}).status_code == 422


def test_txt2img_with_webuiapi_units(client):
    base = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=5)
    unit = webuiapi.ControlNetUnit(image=control_image(), module="canny", model=client.controlnet_model_list()[0],
                                   processor_res=64, threshold_a=100, threshold_b=200, pixel_perfect=True)
    controlled = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=5,
                                controlnet_units=[unit])
    a, b = (np.asarray(r.image).astype(np.int16) for r in (base, controlled))
    assert np.abs(a - b).mean() > 0.5
    info = parse_infotext(controlled.info["infotexts"][0])
    assert info["ControlNet 0"].startswith("Module: canny, Model: tiny-canny [")
    assert "Resize Mode: Resize and Fill" in info["ControlNet 0"]  # webuiapi's default, sent by name
    off = webuiapi.ControlNetUnit(image=control_image(), module="canny", model="tiny-canny", enabled=False)
    same = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=5, controlnet_units=[off])
    assert np.array_equal(np.asarray(same.image), np.asarray(base.image))


def test_raw_alwayson_args_with_any_case_and_int_enums(http):
    payload = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler"}
    base = http.post("/sdapi/v1/txt2img", json=payload).json()
    unit = {"Enabled": True, "INPUT_IMAGE": b64_png(control_image(), prefix=True), "Module": "Canny",
            "Model": "TINY-CANNY", "control_mode": 1, "resize_mode": 0, "processor_res": 64}
    r = http.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert r.status_code == 200, r.text
    a, b = (np.asarray(decode(x["images"][0])).astype(np.int16) for x in (base, r.json()))
    assert np.abs(a - b).mean() > 0.5
    info = parse_infotext(json.loads(r.json()["info"])["infotexts"][0])
    assert "Control Mode: My prompt is more important" in info["ControlNet 0"]
    assert "Resize Mode: Just Resize" in info["ControlNet 0"]
    bad = http.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"ControlNet": {"args": [
        {**unit, "model": "tiny-missing"}]}}})
    assert bad.status_code >= 400 and "ControlNet unit 0" in bad.text and "tiny-missing" in bad.text
