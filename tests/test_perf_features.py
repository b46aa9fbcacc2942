"""The opt-in speed features: token merging (tomesd), torch.compile plumbing, TAESD and full live previews."""
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, UNet2DConditionModel
from safetensors.torch import save_file

from modules import latent_preview, optimizations
from modules.engine import Engine
from modules.errors import ValidationError
from modules.infotext import request_from_infotext
from modules.jobs import JobState
from modules.paths import Paths
from modules.settings import Settings
from tests.test_engine import req


def make_engine(tiny_dir, policy, tmp_path, data_dir=None, **options) -> Engine:
    paths = Paths.from_flags(data_dir=str(data_dir or tiny_dir), ckpt_dir=str(tiny_dir / "models" / "Stable-diffusion"),
                             outputs_dir=str(tmp_path / "outputs"))
    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    for name, value in options.items():
        settings.set(name, value)
    return Engine(paths, policy, settings)


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path)
    yield eng
    eng.shutdown()


def top_level_attention_unet() -> UNet2DConditionModel:
    """The tiny test UNet has attention only at half resolution, where A1111's token merging (max_downsample=1)
    never acts; SD's own UNets have it at full resolution, as this one does."""
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), norm_num_groups=32).eval().requires_grad_(False)


def pixels(job) -> np.ndarray:
    assert job.state == JobState.done, job.error
    return np.asarray(job.result.images[0])


# -- token merging ----------------------------------------------------------------------------
def test_token_merging_changes_pixels_only_for_its_job_and_is_written_in_infotext(engine):
    engine.generate(req(steps=1), timeout=120)
    engine.models.current.unet = top_level_attention_unet()
    before = pixels(engine.generate(req(), timeout=120))
    zero = pixels(engine.generate(req(override_settings={"token_merging_ratio": 0.0}), timeout=120))
    assert np.array_equal(zero, before)

    merged_job = engine.generate(req(override_settings={"token_merging_ratio": 0.5}), timeout=120)
    merged = pixels(merged_job)
    assert not np.array_equal(merged, before)
    assert not optimizations.has_token_merging(engine.models.current.unet)  # removed when the job ended
    assert np.array_equal(pixels(engine.generate(req(), timeout=120)), before)

    text = merged_job.result.infotexts[0]
    assert "Token merging ratio: 0.5" in text and "Token merging ratio" not in engine.generate(
        req(), timeout=120).result.infotexts[0]
    again = request_from_infotext(text)
    assert again.override_settings["token_merging_ratio"] == 0.5
    assert np.array_equal(pixels(engine.generate(again, timeout=120)), merged)  # pasting it reproduces the image


def test_token_merging_setting_applies_to_every_job(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, token_merging_ratio=0.5)
    try:
        eng.generate(req(steps=1), timeout=120)
        unet = eng.models.current.unet = top_level_attention_unet()
        seen = []
        unet.register_forward_pre_hook(lambda m, a: seen.append(optimizations.has_token_merging(m)))
        job = eng.generate(req(), timeout=120)
        assert job.state == JobState.done and seen and all(seen)
        assert not optimizations.has_token_merging(unet)
    finally:
        eng.shutdown()


def test_a_bad_token_merging_ratio_fails_the_job_naming_the_field(engine):
    job = engine.generate(req(override_settings={"token_merging_ratio": 2}), timeout=120)
    assert job.state == JobState.failed and "token_merging_ratio" in job.error
    with pytest.raises(ValidationError):
        optimizations.check_ratio("half")


# -- torch.compile ----------------------------------------------------------------------------
def test_unet_compile_setting_compiles_the_unet_on_load(tiny_dir, policy, tmp_path, monkeypatch):
    calls = []

    def fake_compile(fn, *args, **kwargs):  # records, and leaves the module as it was: compiling takes minutes
        calls.append((getattr(fn, "__self__", None), kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(optimizations, "compile_unavailable_reason", lambda device: None)
    eng = make_engine(tiny_dir, policy, tmp_path, unet_compile=True)
    try:
        job = eng.generate(req(steps=1), timeout=120)
        assert job.state == JobState.done, job.error
        assert [module for module, _ in calls] == [eng.models.current.unet]
    finally:
        eng.shutdown()


def test_unet_compile_is_skipped_with_a_reason_when_unavailable(tiny_dir, policy, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compile must not be called"))
    monkeypatch.setattr(optimizations, "compile_unavailable_reason", lambda device: "no C++ compiler found")
    eng = make_engine(tiny_dir, policy, tmp_path, unet_compile=True)
    try:
        with caplog.at_level(logging.WARNING):
            assert eng.generate(req(steps=1), timeout=120).state == JobState.done
        assert "unet_compile is on but skipped: no C++ compiler found" in caplog.text
    finally:
        eng.shutdown()


def test_compile_is_off_by_default(engine, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compile must not be called"))
    assert engine.generate(req(steps=1), timeout=120).state == JobState.done
    assert optimizations.compile_unavailable_reason(torch.device("cpu")) in (None, "no C++ compiler found "
                                                                              "(inductor needs one on the CPU)")


# -- live previews ----------------------------------------------------------------------------
def tiny_taesd() -> AutoencoderTiny:
    """Upsamples ×2, as the tiny test VAE does (the real TAESD's defaults upsample ×8)."""
    torch.manual_seed(1)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).eval()


def save_taesd(data_dir, model: AutoencoderTiny, layout: str = "original") -> None:
    folder = data_dir / "models" / "VAE-approx"
    folder.mkdir(parents=True, exist_ok=True)
    state = model.decoder.state_dict()
    if layout == "original":  # taesd_decoder.pth's names: Sequential indices one higher (a clamp comes first)
        state = {f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v for k, v in state.items()}
    else:
        state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "taesd_decoder.safetensors"))
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    (folder / "taesd_decoder.config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_taesd_preview_is_the_autoencoder_tiny_decode(sd1_model, tmp_path, layout):
    taesd = tiny_taesd()
    save_taesd(tmp_path, taesd, layout)
    latent = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(2))
    preview = latent_preview.previewer_for(sd1_model, "TAESD", tmp_path)(latent)
    with torch.no_grad():
        expected = taesd.decode(latent[None]).sample[0]
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert preview.size == (64, 64)  # full size, where the cheap preview is the latent's own 32×32
    assert np.array_equal(np.asarray(preview), expected)
    cheap = latent_preview.cheap_preview(latent)
    assert cheap.size == (32, 32)


def test_taesd_without_its_file_falls_back_to_the_cheap_preview_and_says_so_once(sd1_model, tmp_path, caplog):
    latent = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(2))
    latent_preview._warned.clear()
    with caplog.at_level(logging.WARNING, logger="modules.latent_preview"):
        first = latent_preview.previewer_for(sd1_model, "TAESD", tmp_path)(latent)
        latent_preview.previewer_for(sd1_model, "TAESD", tmp_path)
    assert np.array_equal(np.asarray(first), np.asarray(latent_preview.cheap_preview(latent)))
    assert caplog.text.count("TAESD previews need") == 1


def test_job_previews_follow_show_progress_type(tiny_dir, policy, tmp_path):
    data = tmp_path / "data"
    save_taesd(data, tiny_taesd())
    sizes = {}
    for method in ("Approx cheap", "TAESD", "Full"):
        eng = make_engine(tiny_dir, policy, tmp_path, data_dir=data, show_progress_type=method,
                          show_progress_every_n_steps=1)
        try:
            job = eng.generate(req(steps=3), timeout=120)
            assert job.state == JobState.done, job.error
            sizes[method] = job.preview.size
            if method == "Full":  # the last step's latents are the final ones: the preview is the image
                assert np.array_equal(np.asarray(job.preview), pixels(job))
        finally:
            eng.shutdown()
    assert sizes == {"Approx cheap": (32, 32), "TAESD": (64, 64), "Full": (64, 64)}
