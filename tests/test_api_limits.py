"""--max-upload-size and --max-pixels on the real server, and client images of every kind: decompression bombs,
truncated files and odd modes either decode into what the pipeline takes or are a 422 naming the field."""
from __future__ import annotations

import base64
import io
import json
import socket

import httpx
import numpy as np
import pytest
from PIL import Image

from modules.image_input import decode_image
from modules.errors import ValidationError
from tests.test_api_errors import png_claiming
from tests.test_api_helpers import TINY, b64_png, gradient, half_mask, make_engine, running_server

SMALL_PIXELS = 100_000  # a 256x256 request fits, a 512x512 one doesn't


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("limits"))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def http(engine):
    with running_server(engine, ["--nowebui"]) as (url, _), httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def strict(engine):
    argv = ["--nowebui", "--max-upload-size", "1", "--max-pixels", str(SMALL_PIXELS)]
    with running_server(engine, argv) as (url, _), httpx.Client(base_url=url, timeout=120) as client:
        yield client


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def assert_refused(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert field.split(".")[0] in body["detail"]


# -- --max-upload-size ------------------------------------------------------------------------------------------
def test_a_body_over_the_upload_limit_is_413_before_it_is_read(strict):
    big = {"image": "A" * 1_100_000}
    assert_refused(strict.post("/sdapi/v1/png-info", json=big), 413, "body")
    assert "--max-upload-size" in strict.post("/sdapi/v1/png-info", json=big).json()["detail"]


def test_a_chunked_body_is_counted_as_it_arrives(strict):
    def chunks():  # no Content-Length: the server only learns the size by reading
        yield b'{"image": "'
        for _ in range(40):
            yield b"A" * 50_000
        yield b'"}'

    response = strict.post("/sdapi/v1/png-info", content=chunks(), headers={"Content-Type": "application/json"})
    assert_refused(response, 413, "body")


def test_multipart_uploads_are_bounded_too(strict):
    files = {"file": ("big.png", b"\0" * 1_200_000, "image/png")}
    assert_refused(strict.post("/sdapi/v1/png-info", files=files), 413, "body")


def test_bodies_under_the_limit_still_work(strict):
    response = strict.post("/sdapi/v1/png-info", json={"image": b64_png(gradient())})
    assert response.status_code == 200, response.text


def test_the_default_limit_is_50_mb(http, engine):
    from modules import cmd_args
    from modules.api.limits import max_upload_bytes

    assert max_upload_bytes(cmd_args.parse([])) == 50_000_000
    assert max_upload_bytes(cmd_args.parse(["--max-upload-size", "0"])) == 0  # off
    # A raw socket: the client declares 900 MB and sends a few bytes; the answer must come without reading on.
    host, port = str(http.base_url.host), int(http.base_url.port)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /sdapi/v1/png-info HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 900000000\r\n\r\n{\"image\": \"")
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after answering
            answer += chunk
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413") and '"field": "body"' in answer, answer


# -- --max-pixels -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, field", [
    ({"width": 512, "height": 512}, "width"),
    ({"width": 256, "height": 256, "batch_size": 2}, "batch_size"),
    ({"width": 256, "height": 256, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent"}, "hr_scale"),
    ({"width": 64, "height": 64, "enable_hr": True, "hr_resize_x": 512, "hr_upscaler": "Latent"}, "hr_resize_x"),
])
def test_requested_pixels_are_bounded(strict, fields, field):
    response = strict.post("/sdapi/v1/txt2img", json={**TINY, **fields})
    assert_refused(response, 422, field)
    assert "--max-pixels" in response.json()["detail"]


def test_atelier_jobs_and_batches_have_the_same_pixel_budget(strict):
    assert_refused(strict.post("/atelier/v1/txt2img", json={**TINY, "width": 512, "height": 512}), 422, "width")
    batch = strict.post("/atelier/v1/batch", json={"base": {**TINY, "height": 512}, "expand": {"width": [64, 512]}})
    assert batch.status_code == 422 and batch.json()["field"].endswith("width"), batch.text


def test_decoded_images_are_bounded(strict):
    big = b64_png(gradient(400, 400))  # 160000 pixels
    assert_refused(strict.post("/sdapi/v1/img2img", json={**TINY, "init_images": [big]}), 422, "init_images.0")
    small = b64_png(gradient())
    response = strict.post("/sdapi/v1/img2img", json={**TINY, "init_images": [small], "mask": big})
    assert_refused(response, 422, "mask")
    assert_refused(strict.post("/sdapi/v1/extra-single-image", json={"image": big}), 422, "image")
    assert_refused(strict.post("/sdapi/v1/png-info", json={"image": big}), 422, "image")


def test_a_request_within_the_budget_generates(strict):
    response = strict.post("/sdapi/v1/txt2img", json={**TINY, "batch_size": 2})
    assert response.status_code == 200 and len(response.json()["images"]) == 2, response.text


# -- bombs and broken files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("claim", [(50000, 50000), (16385, 1), (9000, 9000)])
def test_decompression_bombs_are_refused_before_decoding(http, claim):
    response = http.post("/sdapi/v1/img2img", json={**TINY, "init_images": [png_claiming(*claim)]})
    assert_refused(response, 422, "init_images.0")
    assert "pixels" in response.json()["detail"]


def broken_files() -> dict[str, str]:
    png = base64.b64decode(b64_png(gradient()))
    jpeg = base64.b64decode(encoded(gradient(), "JPEG"))
    return {
        "png cut in the data": base64.b64encode(png[: len(png) // 2]).decode(),
        "png with a bad crc": base64.b64encode(png[:40] + bytes([png[40] ^ 0xFF]) + png[41:]).decode(),
        "jpeg cut short": base64.b64encode(jpeg[: len(jpeg) // 3]).decode(),
        "only a png signature": base64.b64encode(png[:8]).decode(),
        "gif header only": base64.b64encode(b"GIF89a\x40\x00\x40\x00").decode(),
        "empty": base64.b64encode(b"").decode() or "=",
    }


@pytest.mark.parametrize("name", list(broken_files()))
def test_truncated_and_corrupt_images_are_422(http, name):
    data = broken_files()[name]
    response = http.post("/sdapi/v1/img2img", json={**TINY, "init_images": [b64_png(gradient())], "mask": data})
    assert_refused(response, 422, "mask")


# -- odd modes ----------------------------------------------------------------------------------------------------
def odd_images() -> dict[str, str]:
    base = gradient()
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)).convert("I;16")
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif, webp = io.BytesIO(), io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(webp, format="WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    return {
        "P with transparency": encoded(palette), "LA": encoded(base.convert("LA")), "I;16": encoded(sixteen),
        "CMYK jpeg": encoded(base.convert("CMYK"), "JPEG"), "1-bit": encoded(base.convert("1")),
        "RGBA": encoded(base.convert("RGBA")), "L": encoded(base.convert("L")),
        "animated GIF": base64.b64encode(gif.getvalue()).decode(),
        "animated WEBP": base64.b64encode(webp.getvalue()).decode(), "EXIF-rotated JPEG": exif_rotated(),
    }


def exif_rotated() -> str:
    """A 64x32 JPEG whose EXIF says "rotate 90°": upright it is 32x64."""
    image = Image.new("RGB", (64, 32), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif.tobytes())


@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_modes_work_as_init_image_and_mask(http, name):
    data = odd_images()[name]
    response = http.post("/sdapi/v1/img2img", json={**TINY, "init_images": [data], "mask": data})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_odd_modes_are_converted_keeping_their_meaning():
    images = {name: decode_image(data, "x") for name, data in odd_images().items()}
    assert all(image.mode in ("RGB", "RGBA", "L") for image in images.values())
    assert images["P with transparency"].mode == "RGBA" and images["LA"].mode == "RGBA"
    assert images["P with transparency"].getextrema()[3][0] == 0  # the transparent colour stays transparent
    sixteen = np.asarray(images["I;16"])
    assert sixteen.min() == 0 and sixteen.max() == 255 and 120 < sixteen.mean() < 135  # scaled, not clipped
    assert images["CMYK jpeg"].mode == "RGB" and images["1-bit"].mode == "L"
    assert images["animated GIF"].getpixel((5, 5))[:3] == (255, 0, 0)  # the first frame
    assert images["animated WEBP"].getpixel((5, 5))[:3] == (255, 0, 0)
    upright = images["EXIF-rotated JPEG"]
    assert upright.size == (32, 64)


def test_png_info_still_reads_infotext_after_conversion(http):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 3, Seed: 7, Size: 64x64")
    response = http.post("/sdapi/v1/png-info", json={"image": encoded(gradient().convert("P"), pnginfo=info)})
    assert response.status_code == 200 and str(response.json()["parameters"]["Seed"]) == "7", response.text


def test_the_decoder_names_the_field():
    with pytest.raises(ValidationError) as caught:
        decode_image(png_claiming(50000, 50000), "init_images.3")
    assert caught.value.field == "init_images.3"
    with pytest.raises(ValidationError) as caught:
        decode_image(b64_png(half_mask(64, 64)), "mask", max_pixels=100)
    assert caught.value.field == "mask" and "--max-pixels" in caught.value.reason


# -- JSON that is not text ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("route, raw, field", [
    ("txt2img", '{"prompt": "\\ud800 a cat"}', "prompt"),
    ("txt2img", '{"negative_prompt": "\\udfff"}', "negative_prompt"),
    ("txt2img", '{"infotext": "\\ud800\\nSteps: 1"}', "infotext"),
    ("txt2img", '{"styles": ["ok", "\\ud800"]}', "styles.1"),
    ("txt2img", '{"override_settings": {"\\ud800": 1}, "override_settings_restore_afterwards": false}',
     "override_settings.\\ud800"),
    ("options", '{"\\ud800": "x"}', "\\ud800"),
    ("png-info", '{"image": "\\ud800"}', "image"),
])
def test_lone_surrogates_are_422_before_they_reach_a_tokenizer_or_config(http, route, raw, field):
    # Before: a failed job (500) from the tokenizer, or a settings key that made every later GET /options a 500.
    tiny = ", ".join(f'"{k}": {v}' for k, v in TINY.items())
    body = raw if route in ("options", "png-info") else raw[:-1] + ", " + tiny + "}"
    response = http.post(f"/sdapi/v1/{route}", content=body.encode(), headers={"Content-Type": "application/json"})
    assert_refused(response, 422, field)
    assert "surrogate" in response.json()["detail"]
    assert http.get("/sdapi/v1/options").status_code == 200


def test_surrogate_pairs_are_ordinary_text(http):
    raw = '{"prompt": "a cat \\ud83d\\ude00", "width": 64, "height": 64, "steps": 1}'  # an emoji, escaped
    response = http.post("/sdapi/v1/txt2img", content=raw.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["prompt"] == "a cat \U0001F600"


@pytest.mark.parametrize("raw", [b"[" * 50000 + b"]" * 50000, b'{"seed": ' + b"9" * 5000 + b"}",
                                 b'{"prompt": "\xff\xfe"}'])
def test_unparseable_json_text_is_422_naming_the_body(http, raw):
    response = http.post("/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
    assert_refused(response, 422, "body")
