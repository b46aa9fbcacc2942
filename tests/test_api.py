"""/sdapi/v1 against the real server, driven mostly by the `webuiapi` PyPI client exactly as users drive A1111."""
from __future__ import annotations

import concurrent.futures
import json

import httpx
import numpy as np
import pytest
import webuiapi

from modules.infotext import parse_infotext
from modules.settings import OPTIONS
from tests.test_api_helpers import TINY, b64_png, decode, gradient, half_mask, make_engine, running_server


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    eng = make_engine(tiny_dir, policy, tmp_path_factory.mktemp("api"))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def base_url(engine):
    with running_server(engine, ["--nowebui"]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def api(base_url) -> webuiapi.WebUIApi:
    host, port = base_url.rsplit("//", 1)[1].split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=1)


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def infotext_of(image) -> dict:
    return parse_infotext(image.info["parameters"])


# -- generation with webuiapi ---------------------------------------------------------------------------
def test_txt2img_returns_images_with_infotext_and_a1111_info(api):
    result = api.txt2img(prompt="a red barn", negative_prompt="fog", seed=1234, cfg_scale=6, batch_size=2, **TINY)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]  # no grid: the API saves none
    assert [infotext_of(image)["Seed"] for image in result.images] == ["1234", "1235"]
    assert infotext_of(result.image)["Prompt"] == "a red barn"
    info = result.info
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    assert info["all_prompts"] == ["a red barn"] * 2 and info["negative_prompt"] == "fog"
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 6 and info["steps"] == 1
    assert info["sd_model_name"] == "tiny-sd1" and info["index_of_first_image"] == 0
    assert info["infotexts"] == [image.info["parameters"] for image in result.images]
    assert result.parameters["prompt"] == "a red barn" and result.parameters["seed"] == 1234


def test_img2img_inpaints_only_the_masked_half(api):
    source = gradient()
    result = api.img2img(images=[source], mask_image=half_mask(), prompt="a window", seed=7, steps=2,
                         denoising_strength=0.9, width=64, height=64, inpaint_full_res=False)
    [image] = result.images
    assert image.size == (64, 64)
    text = infotext_of(image)
    assert text["Seed"] == "7" and text["Denoising strength"] == "0.9" and text["Mask blur"] == "4"
    out, src = np.asarray(image.convert("RGB"), dtype=int), np.asarray(source, dtype=int)
    assert np.abs(out[:, 48:] - src[:, 48:]).max() <= 2  # unmasked, beyond the blur: the original
    assert np.abs(out[:, :16] - src[:, :16]).mean() > 10  # masked: regenerated
    assert result.parameters["init_images"] is None  # include_init_images is false by default


def test_extra_single_and_batch_images_upscale(api):
    result = api.extra_single_image(image=gradient(40, 30), upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (80, 60)
    assert result.info == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"  # float, as in A1111
    batch = api.extra_batch_images(images=[gradient(20, 10), gradient(10, 20)], resize_mode=1,
                                   upscaling_resize_w=32, upscaling_resize_h=32, upscaler_1="Nearest")
    assert [image.size for image in batch.images] == [(32, 32), (32, 32)]


def test_png_info_reads_back_what_txt2img_wrote(api):
    image = api.txt2img(prompt="a kite", seed=321, **TINY).image
    result = api.png_info(image)
    assert result.info.startswith("a kite\nSteps: 1, Sampler: Euler")
    assert result.parameters["Seed"] == "321" and result.parameters["Prompt"] == "a kite"


def test_options_round_trip_every_option(api):
    before = api.get_options()
    assert set(OPTIONS) <= set(before)
    changed = {}
    for name, option in OPTIONS.items():
        default = before[name]
        if name == "sd_model_checkpoint":
            continue
        if option.choices:
            changed[name] = next(c for c in option.choices if c != default)
        elif isinstance(option.default, bool):
            changed[name] = not default
        elif isinstance(option.default, int):
            changed[name] = int(option.maximum if option.maximum is not None and default != option.maximum
                                else (option.minimum or 0))
        elif isinstance(option.default, float):
            changed[name] = float(option.maximum if option.maximum is not None and default != option.maximum
                                  else (option.minimum or 0.0))
        elif name.startswith("outdir_"):
            changed[name] = ""  # a real folder would redirect later tests' saves
        else:
            changed[name] = "Automatic" if name == "sd_vae" else f"{default}-x"
    changed.pop("sd_vae")  # only real VAE names (or Automatic/None) are accepted
    changed["sd_vae"] = "None"
    api.set_options(changed)
    after = api.get_options()
    assert {k: after[k] for k in changed} == changed
    api.set_options({k: before[k] for k in changed})
    assert {k: api.get_options()[k] for k in changed} == {k: before[k] for k in changed}


def test_models_and_samplers_lists(api):
    models = api.get_sd_models()
    assert {m["model_name"] for m in models} >= {"tiny-sd1", "tiny-sd2v", "tiny-sdxl"}
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert any(title.startswith("tiny-sd1.safetensors") for title in api.util_get_model_names())
    names = [s["name"] for s in api.get_samplers()]
    assert names[:2] == ["DPM++ 2M", "DPM++ SDE"] and "Euler a" in names
    assert "karras" in api.util_get_scheduler_names()


def test_setting_the_checkpoint_switches_the_model_for_the_next_job(api):
    api.set_options({"sd_model_checkpoint": "tiny-sd2v.safetensors"})
    try:
        assert api.get_options()["sd_model_checkpoint"] == "tiny-sd2v.safetensors"
        assert api.txt2img(prompt="x", seed=1, **TINY).info["sd_model_name"] == "tiny-sd2v"
    finally:
        api.set_options({"sd_model_checkpoint": "tiny-sd1.safetensors"})
    assert api.txt2img(prompt="x", seed=1, **TINY).info["sd_model_name"] == "tiny-sd1"


def test_override_settings_apply_to_one_job_only(api):
    result = api.txt2img(prompt="x", seed=3, override_settings={"CLIP_stop_at_last_layers": 2,
                                                                "samples_format": "jpg"}, **TINY)
    assert result.image.format == "JPEG" and "Clip skip: 2" in result.info["infotexts"][0]
    plain = api.txt2img(prompt="x", seed=3, **TINY)
    assert plain.image.format == "PNG" and "Clip skip" not in plain.info["infotexts"][0]
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1


def test_override_settings_kept_when_restore_afterwards_is_false(api):
    api.txt2img(prompt="x", override_settings={"CLIP_stop_at_last_layers": 3},
                override_settings_restore_afterwards=False, **TINY)
    try:
        assert api.get_options()["CLIP_stop_at_last_layers"] == 3
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})


# -- raw A1111 requests -----------------------------------------------------------------------------------
def test_a1111_api_defaults_and_legacy_fields(http):
    body = {"prompt": "p", "width": 64, "height": 64, "sampler_index": "Euler a", "firstphase_width": 0, "eta": 0.5,
            "s_churn": 1, "restore_faces": False, "tiling": False, "not_a_field": 1, "styles": [], "seed": 9}
    response = http.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["sampler_name"] == "Euler a" and info["steps"] == 50 and info["cfg_scale"] == 7.0
    assert info["batch_size"] == 1 and response.json()["parameters"]["steps"] == 50


def test_legacy_combined_sampler_name_splits_off_the_schedule(http):
    response = http.post("/sdapi/v1/txt2img", json={"sampler_name": "DPM++ 2M Karras", "seed": 2, **TINY})
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text


def test_infotext_field_is_the_base_and_explicit_fields_win(http):
    infotext = "a lighthouse\nNegative prompt: fog\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 77, " \
               "Size: 64x64, Model: not-here"
    response = http.post("/sdapi/v1/txt2img", json={"infotext": infotext, "steps": 1})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["seed"]) == ("a lighthouse", "fog", 77)
    assert (info["steps"], info["sampler_name"], info["cfg_scale"], info["width"]) == (1, "Euler a", 5, 64)
    assert info["sd_model_name"] == "tiny-sd1"  # an unknown model in the infotext is dropped, as in A1111


def test_save_images_saves_and_returns_the_grid_first(http, engine):
    folder = engine.paths.outputs_dir / "txt2img-images"
    before = len(list(folder.rglob("*.png"))) if folder.exists() else 0
    response = http.post("/sdapi/v1/txt2img", json={"save_images": True, "batch_size": 2, "seed": 50, **TINY})
    body = response.json()
    info = json.loads(body["info"])
    assert [decode(i).size for i in body["images"]] == [(128, 64), (64, 64), (64, 64)]
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3
    assert len(list(folder.rglob("*.png"))) == before + 2


def test_send_images_false_and_include_init_images(http):
    response = http.post("/sdapi/v1/txt2img", json={"send_images": False, **TINY})
    assert response.json()["images"] == []
    init = b64_png(gradient(), prefix=True)
    response = http.post("/sdapi/v1/img2img", json={"init_images": [init], "include_init_images": True,
                                                     "denoising_strength": 0.5, **TINY})
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["init_images"] == [init]


def test_lists_without_a_feature_answer_empty_not_404(http):
    for path, empty in [("hypernetworks", []), ("face-restorers", []), ("realesrgan-models", []),
                        ("prompt-styles", []), ("embeddings", {"loaded": {}, "skipped": {}}), ("loras", []),
                        ("script-info", []), ("extensions", []), ("sd-vae", [])]:
        response = http.get(f"/sdapi/v1/{path}")
        assert response.status_code == 200 and response.json() == empty, path
    assert [m["name"] for m in http.get("/sdapi/v1/latent-upscale-modes").json()][0] == "Latent"
    assert [u["name"] for u in http.get("/sdapi/v1/upscalers").json()][:3] == ["None", "Lanczos", "Nearest"]
    assert http.get("/sdapi/v1/schedulers").json()[0]["label"] == "Automatic"
    memory = http.get("/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    flags = http.get("/sdapi/v1/cmd-flags").json()
    assert flags["nowebui"] is True


def test_prompt_styles_come_from_styles_csv(http, engine):
    engine.paths.styles_file.write_text("name,prompt,negative_prompt\nNoir,\"{prompt}, film noir\",color\n",
                                        encoding="utf-8")
    try:
        assert http.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "Noir", "prompt": "{prompt}, film noir", "negative_prompt": "color"}]
    finally:
        engine.paths.styles_file.unlink()
    assert http.get("/sdapi/v1/prompt-styles").json() == []


def test_maintenance_routes(http):
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-embeddings", "refresh-loras", "interrupt", "skip"):
        assert http.post(f"/sdapi/v1/{path}").status_code == 200, path
    assert http.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert http.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert http.post("/sdapi/v1/txt2img", json={"seed": 1, **TINY}).status_code == 200


def test_progress_when_idle(http):
    body = http.get("/sdapi/v1/progress").json()
    assert body["progress"] == 0 and body["state"]["job_count"] == 0 and body["current_image"] is None


def test_thirty_concurrent_requests_all_complete_with_their_own_seed(base_url):
    def one(seed: int) -> str:
        with httpx.Client(base_url=base_url, timeout=300) as client:
            response = client.post("/sdapi/v1/txt2img", json={"prompt": f"p{seed}", "seed": seed, **TINY})
            assert response.status_code == 200, response.text
            return json.loads(response.json()["info"])["infotexts"][0]

    seeds = list(range(5000, 5030))
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        texts = list(pool.map(one, seeds))
    for seed, text in zip(seeds, texts):
        parsed = parse_infotext(text)
        assert parsed["Seed"] == str(seed) and parsed["Prompt"] == f"p{seed}"


# -- built-in scripts through the API ------------------------------------------------------------------------
def test_sd_upscale_runs_with_a1111_script_args(http):
    body = {"prompt": "a castle", "init_images": [b64_png(gradient(64, 64))], "denoising_strength": 0.3,
            "script_name": "sd upscale", "script_args": ["", 16, "Lanczos", 2.0], **TINY}
    response = http.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    images = [decode(data) for data in response.json()["images"]]
    assert images and all(image.size == (128, 128) for image in images)
    assert "Steps: 1" in images[0].info["parameters"]


def test_scripts_are_listed_and_an_unknown_one_is_a_422(http):
    listed = http.get("/sdapi/v1/scripts").json()
    assert "sd upscale" in listed["img2img"] and "x/y/z plot" in listed["txt2img"]
    response = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "script_name": "no such script", **TINY})
    assert response.status_code == 422 and response.json()["field"] == "script_name"


# -- checkpoint merger ------------------------------------------------------------------------------------
def test_merge_route_writes_a_checkpoint_and_lists_it(http, engine):
    body = {"primary_model_name": "tiny-sd1-inpainting", "secondary_model_name": "tiny-sd1",
            "multiplier": 0.5, "custom_name": "api-merge", "precision": "keep"}
    response = http.post("/atelier/v1/merge", json=body)
    assert response.status_code == 200, response.text
    merged = engine.models.checkpoints.find(response.json()["name"])
    try:
        assert merged is not None and merged.path.name == "api-merge.inpainting.safetensors"  # A1111 marks inpainting merges
        unknown = http.post("/atelier/v1/merge", json={**body, "primary_model_name": "no-such-model"})
        assert unknown.status_code == 422 and unknown.json()["field"] == "sd_model_checkpoint"
        swapped = http.post("/atelier/v1/merge", json={**body, "primary_model_name": "tiny-sd1",
                                                       "secondary_model_name": "tiny-sd1-inpainting"})
        assert swapped.status_code == 422 and "inpainting" in swapped.json()["detail"]
    finally:
        if merged is not None:
            merged.path.unlink()
