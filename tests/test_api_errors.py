"""Bad input of every kind is a 4xx JSON answer naming the field, never a 500, and the server keeps serving."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.test_api_helpers import TINY, b64_png, gradient, make_engine, running_server


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("errors"))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def http(engine):
    with running_server(engine, ["--nowebui"]) as (url, _):
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client


def png_claiming(width: int, height: int) -> str:
    """A PNG whose header claims a huge size (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def truncated_png() -> str:
    buffer = io.BytesIO()
    gradient().save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()[:80]).decode()


IMAGE = b64_png(gradient())

CASES = [
    # (route, body, field)
    ("txt2img", {"steps": "abc"}, "steps"),
    ("txt2img", {"width": 100000}, "width"),
    ("txt2img", {"height": 65}, "height"),
    ("txt2img", {"batch_size": 10**6}, "batch_size"),
    ("txt2img", {"steps": 0}, "steps"),
    ("txt2img", {"seed": -5}, "seed"),
    ("txt2img", {"seed": 2**40}, "seed"),
    ("txt2img", {"cfg_scale": 1e9}, "cfg_scale"),
    ("txt2img", {"prompt": 5}, "prompt"),
    ("txt2img", {"styles": "not a list"}, "styles"),
    ("txt2img", {"override_settings": "x"}, "override_settings"),
    ("txt2img", {"sampler_name": "Bogus Sampler"}, "sampler_name"),
    ("txt2img", {"sampler_index": "Bogus Sampler"}, "sampler_name"),
    ("txt2img", {"scheduler": "sideways"}, "scheduler"),
    ("txt2img", {"sampler_name": "DPM2", "scheduler": "Uniform"}, "scheduler"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "Nope"}, "hr_upscaler"),
    ("txt2img", {"script_name": "nope"}, "script_name"),
    ("txt2img", {"seed_resize_from_w": 10**6, "seed_resize_from_h": 64}, "seed_resize_from_w"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "missing.safetensors"}},
     "override_settings.sd_model_checkpoint"),
    ("txt2img", {"override_settings": {"sd_vae": "missing.pt"}}, "override_settings.sd_vae"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 50}}, "override_settings.CLIP_stop_at_last_layers"),
    ("txt2img", {"override_settings": {"samples_format": "bmp"}}, "override_settings.samples_format"),
    ("txt2img", {"infotext": "p\nSteps: many, Sampler: Euler, Seed: 1, Size: 64x64"}, "infotext.steps"),
    ("img2img", {}, "init_images"),
    ("img2img", {"init_images": []}, "init_images"),
    ("img2img", {"init_images": ["not base64!"]}, "init_images.0"),
    ("img2img", {"init_images": [IMAGE, "aGVsbG8="]}, "init_images.1"),  # valid base64, not an image
    ("img2img", {"init_images": [png_claiming(40000, 40000)]}, "init_images.0"),
    ("img2img", {"init_images": [truncated_png()]}, "init_images.0"),
    ("img2img", {"init_images": ["https://example.com/a.png"]}, "init_images.0"),
    ("img2img", {"init_images": [IMAGE], "mask": "%%%"}, "mask"),
    ("img2img", {"init_images": [IMAGE], "denoising_strength": 2}, "denoising_strength"),
    ("img2img", {"init_images": [IMAGE], "resize_mode": 9}, "resize_mode"),
    ("img2img", {"init_images": [IMAGE], "inpainting_fill": 7}, "inpainting_fill"),
    ("img2img", {"init_images": "abc"}, "init_images"),
    ("extra-single-image", {"image": "nope"}, "image"),
    ("extra-single-image", {"image": IMAGE, "upscaler_1": "Nope"}, "upscaler_1"),
    ("extra-single-image", {"image": IMAGE, "upscaling_resize": 0}, "upscaling_resize"),
    ("extra-single-image", {"image": IMAGE, "resize_mode": 2}, "resize_mode"),
    ("extra-single-image", {"image": IMAGE, "resize_mode": 1, "upscaling_resize_w": 10**6,
                            "upscaling_resize_h": 10**6}, "upscaling_resize_w"),
    ("extra-batch-images", {"imageList": [{"data": IMAGE, "name": "a"}, {"data": "x", "name": "b"}]},
     "imageList.1.data"),
    ("png-info", {"image": "@@"}, "image"),
    ("png-info", {}, "image"),
    ("options", {"samples_format": "bmp"}, "samples_format"),
    ("options", {"CLIP_stop_at_last_layers": "two"}, "CLIP_stop_at_last_layers"),
    ("options", {"sd_model_checkpoint": "missing.safetensors"}, "sd_model_checkpoint"),
    ("options", {"samples_save": "yes please"}, "samples_save"),
]


@pytest.mark.parametrize("route, body, field", CASES, ids=[f"{r}-{f}" for r, _, f in CASES])
def test_bad_input_is_422_naming_the_field(http, route, body, field):
    if route in ("txt2img", "img2img"):
        body = {**TINY, **body}
    response = http.post(f"/sdapi/v1/{route}", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["field"] == field and payload["error"] == "ValidationError"
    assert field.split(".")[0] in payload["detail"]


@pytest.mark.parametrize("route", ["txt2img", "img2img", "options", "png-info", "extra-single-image"])
def test_malformed_and_non_object_bodies(http, route):
    for content in (b"{not json", b"[1, 2]", b'"text"', b""):
        response = http.post(f"/sdapi/v1/{route}", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (content, response.text)
        assert response.json()["field"] == "body"


def test_non_finite_numbers_are_refused(http):
    for raw in (b'{"cfg_scale": NaN, "steps": 1, "width": 64, "height": 64}',
                b'{"cfg_scale": Infinity, "steps": 1, "width": 64, "height": 64}'):
        response = http.post("/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["field"] == "cfg_scale", response.text


def test_unknown_routes_and_methods_answer_json(http):
    missing = http.get("/sdapi/v1/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    wrong = http.get("/sdapi/v1/txt2img")
    assert wrong.status_code == 405 and "detail" in wrong.json()
    assert http.get("/atelier/v1/jobs", params={"state": "bogus"}).json()["field"] == "state"
    assert http.get("/atelier/v1/jobs/x/result", params={"wait": -1}).json()["field"] == "wait"


def test_the_server_keeps_serving_after_bad_input(http):
    response = http.post("/sdapi/v1/txt2img", json={"seed": 99, **TINY})
    assert response.status_code == 200 and len(response.json()["images"]) == 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=6)
# Every field a client may send that can't make the job itself expensive (size, steps, counts are pinned).
FUZZED = ["prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
          "seed_resize_from_w", "sampler_name", "sampler_index", "scheduler", "cfg_scale", "denoising_strength",
          "override_settings", "script_name", "script_args", "alwayson_scripts", "infotext", "restore_faces",
          "tiling", "eta", "s_churn", "send_images", "save_images", "firstphase_width", "hr_scale", "hr_upscaler",
          "seed_enable_extras", "override_settings_restore_afterwards", "comments", "force_task_id"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FUZZED), JSON_VALUES, max_size=3))
def test_fuzzed_fields_never_cause_a_server_error(http, fields):
    if fields.get("override_settings_restore_afterwards") is False:
        fields.pop("override_settings", None)  # keeping random overrides would change the settings for later tests
    response = http.post("/sdapi/v1/txt2img", json={**fields, **TINY})
    assert response.status_code in (200, 422), (fields, response.text)
    if response.status_code == 422:
        assert response.json()["field"], response.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_fuzzed_images_never_cause_a_server_error(http, data):
    response = http.post("/sdapi/v1/png-info", json={"image": base64.b64encode(data).decode()})
    assert response.status_code in (200, 422), response.text


def test_image_with_prefix_and_line_breaks_decodes(http):
    buffer = io.BytesIO()
    image = Image.new("RGB", (8, 8))
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    wrapped = "\n".join(data[i:i + 20] for i in range(0, len(data), 20)).rstrip("=")
    for form in (data, f"data:image/png;base64,{data}", wrapped):
        assert http.post("/sdapi/v1/png-info", json={"image": form}).status_code == 200
