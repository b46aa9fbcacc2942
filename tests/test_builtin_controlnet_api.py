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
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cn-api")


@pytest.fixture(scope="module")
def server(tiny_dir, policy, tmp_path_factory, work):
    folder = tmp_path_factory.mktemp("ControlNet")
    save_tiny_controlnet(folder / "tiny-canny.safetensors", "sd1", seed=1)
    save_tiny_controlnet(folder / "tiny-depth.safetensors", "sd1", seed=2)
    (folder / "annotators").mkdir()
    save_tiny_controlnet(folder / "annotators" / "not-a-model.safetensors", "sd1")  # never listed
    engine = controlnet_engine(tiny_dir, policy, work, folder)
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
    # Each call gets its own alwayson_scripts: webuiapi's default {} is shared, and its ControlNet units would
    # stay in it for later tests' clients.
    base = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=5)
    unit = webuiapi.ControlNetUnit(image=control_image(), module="canny", model=client.controlnet_model_list()[0],
                                   processor_res=64, threshold_a=100, threshold_b=200, pixel_perfect=True)
    controlled = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=5,
                                controlnet_units=[unit], alwayson_scripts={})
    a, b = (np.asarray(r.image).astype(np.int16) for r in (base, controlled))
    assert np.abs(a - b).mean() > 0.5
    info = parse_infotext(controlled.info["infotexts"][0])
    assert info["ControlNet 0"].startswith("Module: canny, Model: tiny-canny [")
    assert "Resize Mode: Resize and Fill" in info["ControlNet 0"]  # webuiapi's default, sent by name
    assert len(controlled.images) == 2 and controlled.images[1].size == (64, 64)  # the image, then the map
    off = webuiapi.ControlNetUnit(image=control_image(), module="canny", model="tiny-canny", enabled=False)
    same = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=5, controlnet_units=[off],
                         alwayson_scripts={})
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


PAYLOAD = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler"}


def txt2img(http, units, **changes) -> tuple[list, dict]:
    """(decoded images, info) of an /sdapi/v1/txt2img with these ControlNet units."""
    body = {**PAYLOAD, **changes, "alwayson_scripts": {"controlnet": {"args": list(units)}}}
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return [decode(data) for data in r.json()["images"]], json.loads(r.json()["info"])


def canny_unit(**kw) -> dict:
    return {"image": b64_png(control_image()), "module": "canny", "model": "tiny-canny", "processor_res": 64, **kw}


def saved_files(work) -> list:
    return sorted(p for p in (work / "outputs").rglob("*") if p.is_file())


def test_the_detected_map_comes_back_after_the_images(http):
    pictures, info = txt2img(http, [canny_unit()], batch_size=2)
    assert len(pictures) == 3 and len(info["infotexts"]) == 2  # A1111: infotexts only for the generated ones
    edges = cv2.Canny(np.asarray(control_image()), 100, 200)
    assert edges.any() and pictures[2].size == (64, 64)
    assert np.array_equal(np.asarray(pictures[2].convert("RGB")), np.stack([edges] * 3, axis=2))
    assert "parameters" not in pictures[2].info and "parameters" in pictures[0].info
    # The generated images and their infotexts are what they are without the map.
    same, same_info = txt2img(http, [canny_unit()], batch_size=2,
                              override_settings={"control_net_no_detectmap": True})
    assert len(same) == 2 and same_info["infotexts"] == info["infotexts"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(pictures, same))


def test_no_map_when_turned_off_or_without_a_preprocessor(http):
    assert len(txt2img(http, [canny_unit(save_detected_map=False)])[0]) == 1
    assert len(txt2img(http, [canny_unit(module="none")])[0]) == 1
    assert len(txt2img(http, [canny_unit(model="None")])[0]) == 1  # a unit that does nothing has no map
    assert len(txt2img(http, [canny_unit(), canny_unit(threshold_a=50)])[0]) == 3  # one map per unit
    assert http.post("/sdapi/v1/options", json={"control_net_no_detectmap": True}).status_code == 200
    try:
        assert len(txt2img(http, [canny_unit()])[0]) == 1
    finally:
        http.post("/sdapi/v1/options", json={"control_net_no_detectmap": False})
    assert len(txt2img(http, [canny_unit()])[0]) == 2


def test_the_map_is_not_saved_nor_put_in_the_grid(http, work):
    before = saved_files(work)
    save = {"save_images": True, "override_settings": {"samples_save": True, "grid_save": True}}
    pictures, info = txt2img(http, [canny_unit()], **save)
    written = [p for p in saved_files(work) if p not in before]
    assert len(pictures) == 2 and len(written) == 1 and "-images" in str(written[0])  # no grid of image + map
    pictures, info = txt2img(http, [canny_unit()], batch_size=2, **save)
    assert len(pictures) == 4 and info["index_of_first_image"] == 1  # grid, the two images, the map
    assert pictures[0].size == (128, 64)  # the grid holds the generated images only
    assert len([p for p in saved_files(work) if p not in before]) == 4  # two more images and their grid
