"""--medvram / --lowvram and the out-of-memory retries, on the real tiny model.

There is no GPU here, so the offloader runs between "cpu:0" (standing in for the device) and "cpu" (the
RAM it offloads to): the moves are real `.to()` calls, and a recorder around them says what moved where and
when. Out-of-memory errors are injected with a forward hook on the real model, where a real one would
come from.
"""
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modules import devices, offload, vae_codec
from modules.jobs import JobState
from modules.model_loading import load_checkpoint
from modules.processing import generate
from modules.request import GenerationRequest
from modules.engine import Engine
from modules.paths import Paths
from modules.settings import Settings
from tests.test_engine import req

DEVICE, STORAGE = torch.device("cpu", 0), torch.device("cpu")


class MoveLog:
    """The mover the offloader is given: does the real move, and notes (component, 'in'/'out')."""

    def __init__(self, model):
        self.names = {id(model.unet): "unet", id(model.vae): "vae"}
        self.names.update({id(e): "text_encoder" for e in model.text_encoders})
        for i, block in enumerate(offload.Offloader._big_blocks(model.unet)):
            self.names[id(block)] = f"block{i}"
        for name, child in model.unet.named_children():
            self.names.setdefault(id(child), "unet_stem")
        self.events: list[tuple[str, str]] = []

    def __call__(self, module, device):
        self.events.append((self.names.get(id(module), type(module).__name__), "in" if device == DEVICE else "out"))
        module.to(device)


def small_request(**changes) -> GenerationRequest:
    base = dict(prompt="a red boat", negative_prompt="fog", seed=7, steps=2, width=64, height=64,
                sampler_name="Euler", cfg_scale=5.0)
    base.update(changes)
    return GenerationRequest(**base)


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    eng = Engine(Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "outputs")), policy, settings)
    yield eng
    eng.shutdown()


@pytest.fixture()
def model(tiny_ckpt, policy):
    return load_checkpoint(tiny_ckpt["sd1"], policy)  # its own copy: these tests attach hooks to it


def test_medvram_brings_each_component_in_as_it_is_used_and_sends_the_last_one_away(model):
    plain = np.asarray(generate(small_request(), model).images[0])
    moves = MoveLog(model)
    offloader = offload.Offloader(model, "medvram", DEVICE, STORAGE, move=moves).attach()
    assert moves.events == [("text_encoder", "out"), ("unet", "out"), ("vae", "out")]  # all start in RAM
    moves.events.clear()

    image = generate(small_request(), model).images[0]  # its prompts are cached: no text encoder needed
    assert moves.events == [("unet", "in"), ("unet", "out"), ("vae", "in")]
    assert np.array_equal(np.asarray(image), plain)  # where the weights sit changes nothing in the pixels

    moves.events.clear()
    generate(small_request(prompt="a blue boat"), model)
    assert moves.events == [("vae", "out"), ("text_encoder", "in"), ("text_encoder", "out"), ("unet", "in"),
                            ("unet", "out"), ("vae", "in")]

    offloader.detach()
    assert not model.unet._forward_pre_hooks and not model.text_encoders[0]._forward_pre_hooks
    assert not any(child._forward_pre_hooks for child in model.vae.children())


def test_medvram_img2img_moves_the_vae_in_for_the_encode_first(model):
    from PIL import Image

    moves = MoveLog(model)
    offload.Offloader(model, "medvram", DEVICE, STORAGE, move=moves).attach()
    moves.events.clear()
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    generate(small_request(prompt="a green boat", init_images=[init], denoising_strength=0.6), model)
    ins = [name for name, way in moves.events if way == "in"]
    assert ins == ["vae", "text_encoder", "unet", "vae"]  # prompts are encoded when the pass starts


def test_lowvram_swaps_unet_blocks_one_at_a_time(model):
    plain = np.asarray(generate(small_request(steps=3), model).images[0])
    moves = MoveLog(model)
    offload.Offloader(model, "lowvram", DEVICE, STORAGE, move=moves).attach()
    moves.events.clear()
    image = generate(small_request(steps=3), model).images[0]

    on_device, most = set(), 0
    for name, way in moves.events:
        if name.startswith("block"):
            (on_device.add if way == "in" else on_device.discard)(name)
            most = max(most, len(on_device))
    assert most == 1  # never two big blocks on the device at once
    blocks = len(offload.Offloader._big_blocks(model.unet))
    assert sum(1 for name, way in moves.events if name.startswith("block") and way == "in") == 3 * blocks
    assert ("unet", "in") not in moves.events  # the whole UNet never comes over: only its stem
    assert ("unet_stem", "in") in moves.events
    assert np.array_equal(np.asarray(image), plain)


def test_medvram_and_lowvram_are_no_ops_on_the_cpu_and_say_why(caplog):
    with caplog.at_level(logging.INFO, logger="modules.devices"):
        policy = devices.choose_policy(use_cpu=True, lowvram=True)
    assert policy.offload == "none" and policy.weights_device == policy.device
    assert "--lowvram ignored" in caplog.text


def test_offload_policy_loads_weights_into_ram():
    policy = devices.DevicePolicy(torch.device("cuda"), torch.float16, torch.float16, False, "medvram")
    assert policy.weights_device == torch.device("cpu") and policy.name == "cuda float16 medvram"


class FailOnce:
    """A forward pre-hook that raises the device's out-of-memory error on the first `fail` calls."""

    def __init__(self, fail: int = 1):
        self.fail, self.calls = fail, 0

    def __call__(self, _module, _args):
        self.calls += 1
        if self.calls <= self.fail:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_unet_out_of_memory_reruns_the_job_with_medvram_and_notes_it(engine):
    reference = engine.generate(req(), timeout=120)
    assert reference.state == JobState.done, reference.error
    model = engine.models.current
    fault = FailOnce()
    handle = model.unet.register_forward_pre_hook(fault)
    try:
        job = engine.generate(req(), timeout=120)
    finally:
        handle.remove()
    assert job.state == JobState.done, job.error
    assert fault.calls > 1  # it failed once, then ran
    assert any("medvram" in note for note in job.result.result.notes)
    assert len(job.result.images) == 1 and len(job.result.paths) == 1  # kept once, not once per attempt
    assert np.array_equal(np.asarray(job.result.images[0]), np.asarray(reference.result.images[0]))
    assert model.offloader is None and not model.unet._forward_pre_hooks  # offload was for that run only


def test_unet_out_of_memory_twice_fails_the_job_with_the_error(engine):
    engine.generate(req(steps=1), timeout=120)
    model = engine.models.current
    handle = model.unet.register_forward_pre_hook(FailOnce(fail=2))
    try:
        job = engine.generate(req(), timeout=120)
    finally:
        handle.remove()
    assert job.state == JobState.failed and "out of memory" in str(job.error)
    assert model.offloader is None and not model.unet._forward_pre_hooks


def assert_close_to(tiled: torch.Tensor, plain: torch.Tensor) -> None:
    """Tiles normalise (GroupNorm) over themselves, not the whole image, so pixels shift a little everywhere
    and most at the seams: near the plain decode, far nearer than another image is."""
    assert tiled.shape == plain.shape
    correlation = torch.corrcoef(torch.stack([tiled.flatten(), plain.flatten()]))[0, 1]
    assert correlation > 0.97, correlation
    assert (tiled - plain).abs().mean() < 0.2 * plain.std(), (tiled - plain).abs().mean()


def test_vae_out_of_memory_decodes_in_tiles_close_to_the_plain_decode(model):
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(3))  # 96 px: 16-latent tiles
    plain = vae_codec.decode(model, latents)
    fault = FailOnce()
    handle = model.vae.decoder.register_forward_pre_hook(fault)
    notes: list[str] = []
    try:
        tiled = vae_codec.decode(model, latents, notes)
    finally:
        handle.remove()
    assert fault.calls - 1 == 16  # the retry really split: 4×4 tiles of 16 latents, stepping 12
    assert notes == ["VAE ran out of GPU memory; decoded in tiles instead"]
    assert_close_to(tiled, plain)
    other = vae_codec.decode(model, torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(5)))
    assert (tiled - plain).abs().mean() < 0.2 * (other - plain).abs().mean()
    assert not model.vae.use_tiling and model.vae.tile_latent_min_size == 16  # settings put back


def test_tiled_decode_is_close_to_the_plain_one_but_really_tiled(model):
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(4))
    plain, tiled = vae_codec.decode(model, latents), vae_codec.decode_tiled(model, latents)
    assert not torch.equal(plain, tiled)
    assert_close_to(tiled, plain)


def test_a_weight_counts_as_on_the_device_by_type_and_by_index_only_when_one_is_asked():
    cpu = torch.zeros(1)
    assert offload._is_on(cpu, torch.device("cpu")) and offload._is_on(cpu, torch.device("cpu", 0))
    assert not offload._is_on(torch.zeros(1, device="meta"), torch.device("cpu"))


def test_vae_encode_out_of_memory_encodes_in_tiles(model):
    pixels = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(6)) * 2 - 1
    plain = vae_codec.encode(model, pixels)
    fault = FailOnce()
    handle = model.vae.encoder.register_forward_pre_hook(fault)
    notes: list[str] = []
    try:
        tiled = vae_codec.encode(model, pixels, notes)
    finally:
        handle.remove()
    assert fault.calls - 1 > 1 and notes == ["VAE ran out of GPU memory; encoded in tiles instead"]
    assert_close_to(tiled, plain)


TRIM_PROBE = """
import gc, psutil, torch
from modules import devices
rss = lambda: psutil.Process().memory_info().rss
xs = [torch.ones(16 * 1024) for _ in range(5000)]  # 64 KiB each: below glibc's mmap threshold, so heap memory
del xs
gc.collect()
freed = rss()
devices.free_memory()
print(freed - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_free_memory_gives_freed_ram_back_to_the_os():
    """In a fresh process, so nothing else of the test session's heap is in the way."""
    proc = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) > 200e6  # of the 320 MB freed, RSS only drops once the allocator hands it back


def test_a_medvram_policy_offloads_from_the_first_load_through_the_engine(tiny_dir, policy, tmp_path):
    """The whole path: ModelManager attaches the offloader when it loads, and jobs give the same pixels."""
    import dataclasses

    images = []
    for mode in ("none", "medvram", "lowvram"):
        settings = Settings(file=tmp_path / f"{mode}.json")
        settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
        paths = Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / mode))
        eng = Engine(paths, dataclasses.replace(policy, offload=mode), settings)
        try:
            job = eng.generate(req(), timeout=120)
            assert job.state == JobState.done, job.error
            offloader = eng.models.current.offloader
            assert (offloader.mode if offloader else "none") == mode
            images.append(np.asarray(job.result.images[0]))
        finally:
            eng.shutdown()
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
