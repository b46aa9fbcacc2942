"""Finding, detecting, loading and switching checkpoints, on tiny single-file models in the real key layout."""
import hashlib
import json
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.errors import CheckpointError, UnsafeFileError, ValidationError
from modules.model_family import detect_model_family
from modules.model_files import HashCache, checkpoint_list
from modules.model_loading import load_checkpoint
from modules.safe_loading import read_state_dict
from modules.model_manager import ModelManager
from modules.paths import Paths
from modules.processing import generate
from modules.request import GenerationRequest
from modules.settings import Settings
from tests.tiny_models import build_tiny_components, export_ldm_state_dict, save_tiny_ckpt_pickle


def _keys_and_shapes(family, inpainting=False):
    sd = export_ldm_state_dict(build_tiny_components(family, inpainting), family)
    return set(sd), {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("family, inpainting, expected", [
    ("sd1", False, "sd1"), ("sd1", True, "sd1"), ("sd2", False, "sd2"), ("sdxl", False, "sdxl"), ("sdxl", True, "sdxl"),
])
def test_family_is_detected_from_keys_alone(family, inpainting, expected):
    keys, shapes = _keys_and_shapes(family, inpainting)
    detected = detect_model_family(keys, shapes)
    assert detected.name == expected
    assert detected.inpainting == inpainting


def test_sd2_v_prediction_comes_from_the_probe_or_config():
    keys, shapes = _keys_and_shapes("sd2-v")
    assert detect_model_family(keys, shapes, v_prediction=True).name == "sd2-v"
    assert detect_model_family(keys, shapes, v_prediction=False).name == "sd2"


def test_a_file_without_a_unet_is_refused():
    with pytest.raises(CheckpointError, match="no UNet"):
        detect_model_family({"first_stage_model.encoder.conv_in.weight"})


@pytest.mark.parametrize("name, family, channels", [
    ("sd1", "sd1", 4), ("sd2-v", "sd2-v", 4), ("sdxl", "sdxl", 4), ("sd1-inpainting", "sd1", 9),
])
def test_each_family_loads_from_its_single_file(tiny_ckpt, policy, name, family, channels):
    model = load_checkpoint(tiny_ckpt[name], policy)
    assert model.family.name == family
    assert model.unet.config.in_channels == channels
    assert len(model.text_encoders) == (2 if family == "sdxl" else 1)
    assert model.scheduler_config["prediction_type"] == ("v_prediction" if family == "sd2-v" else "epsilon")


def test_loaded_weights_equal_the_saved_ones(tiny_ckpt, policy):
    model = load_checkpoint(tiny_ckpt["sd1"], policy)
    original = build_tiny_components("sd1")["unet"].state_dict()
    for key, value in model.unet.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_ckpt_with_plain_tensors_loads_like_safetensors(tmp_path, policy, tiny_ckpt):
    path = save_tiny_ckpt_pickle(tmp_path / "pickled.ckpt", "sd1")
    a = generate(GenerationRequest(prompt="x", seed=3, steps=2, width=64, height=64, sampler_name="Euler"),
                 load_checkpoint(path, policy)).images[0]
    b = generate(GenerationRequest(prompt="x", seed=3, steps=2, width=64, height=64, sampler_name="Euler"),
                 load_checkpoint(tiny_ckpt["sd1"], policy)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _WritesAFile(str(target))}}, f)
    with pytest.raises(UnsafeFileError, match="refused"):
        read_state_dict(path)
    assert not target.exists()


def test_truncated_safetensors_is_reported(tmp_path, tiny_ckpt):
    broken = tmp_path / "broken.safetensors"
    data = tiny_ckpt["sd1"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="outside the file"):
        read_state_dict(broken)


@pytest.mark.parametrize("header", [
    struct.pack("<Q", 10**12) + b"{}",  # a header bigger than the file
    struct.pack("<Q", 4) + b"nope",  # not JSON
    struct.pack("<Q", 60) + json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode().ljust(60),
])
def test_lying_safetensors_headers_are_reported(tmp_path, header):
    path = tmp_path / "liar.safetensors"
    path.write_bytes(header)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_titles_and_hashes_follow_a1111(tmp_path, tiny_ckpt):
    folder = tmp_path / "ckpts" / "sub"
    folder.mkdir(parents=True)
    shutil.copy(tiny_ckpt["sd1"], folder / "model.safetensors")
    (folder / "model.vae.safetensors").write_bytes(b"x")  # a VAE beside it is not a checkpoint
    cache = HashCache(tmp_path / "cache.json")
    files = checkpoint_list(tmp_path / "ckpts", cache)
    assert [f.name for f in files.items] == ["sub/model.safetensors"]
    item = files.items[0]
    assert item.title == "sub/model.safetensors"  # hash not computed yet: computed lazily
    expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert item.shorthash == expected[:10]
    assert item.title == f"sub/model.safetensors [{expected[:10]}]"
    assert json.loads((tmp_path / "cache.json").read_text())["hashes"]["checkpoint/sub/model.safetensors"]["sha256"] == expected
    assert files.find(expected[:10]) is item and files.find("model") is item and files.find(item.title) is item
    with pytest.raises(ValidationError) as err:
        files.resolve("missing-model")
    assert err.value.field == "sd_model_checkpoint" and "sub/model.safetensors" in str(err.value)


def _manager(tiny_dir, policy, tmp_path) -> ModelManager:
    paths = Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "out"))
    return ModelManager(paths, policy, Settings(), HashCache(None))


def test_manager_switches_and_a_corrupt_file_keeps_the_previous_model(tiny_dir, tiny_ckpt, policy, tmp_path):
    manager = _manager(tiny_dir, policy, tmp_path)
    model, file = manager.get("tiny-sd1")
    assert file.name == "tiny-sd1.safetensors"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(tiny_ckpt["sd1"].read_bytes()[:1000])
    manager.checkpoints.add_file(broken)
    with pytest.raises(CheckpointError):
        manager.get("broken")
    assert manager.current is model and manager.current_file is file
    model2, _ = manager.get("tiny-sdxl")
    assert model2.family.name == "sdxl"
    back, _ = manager.get("tiny-sd1")
    assert back is model  # served from the RAM cache


def test_vae_swap_changes_pixels_and_none_restores_them(tiny_dir, policy, tmp_path):
    manager = _manager(tiny_dir, policy, tmp_path)
    vae_dir = tiny_dir / "models" / "VAE"
    vae_dir.mkdir(parents=True, exist_ok=True)
    other = build_tiny_components("sd1", seed=7)["vae"]
    ldm = {k.removeprefix("first_stage_model."): v for k, v in export_ldm_state_dict(
        {"vae": other, **{k: v for k, v in build_tiny_components("sd1").items() if k != "vae"}}, "sd1").items()
        if k.startswith("first_stage_model.")}
    save_file(ldm, str(vae_dir / "other.safetensors"))
    manager.refresh()
    req = GenerationRequest(prompt="x", seed=5, steps=2, width=64, height=64, sampler_name="Euler")

    def run(vae):
        model, _ = manager.get("tiny-sd1", vae)
        return np.asarray(generate(req, model).images[0])

    base = run("None")
    swapped = run("other.safetensors")
    restored = run("None")
    assert np.abs(base.astype(int) - swapped).mean() > 1
    assert np.array_equal(base, restored)
    with pytest.raises(ValidationError) as err:
        manager.get("tiny-sd1", "no-such-vae")
    assert err.value.field == "sd_vae"


def test_reading_casts_in_place_and_skips_ema_keys(tmp_path):
    weights = {"a": torch.randn(3, 5, dtype=torch.float16), "b": torch.arange(4), "model_ema.a": torch.ones(2)}
    save_file(weights, str(tmp_path / "w.safetensors"))
    read = read_state_dict(tmp_path / "w.safetensors", torch.bfloat16)
    assert set(read) == {"a", "b"}
    assert read["a"].dtype == torch.bfloat16 and torch.equal(read["a"], weights["a"].to(torch.bfloat16))
    assert read["b"].dtype == torch.int64 and torch.equal(read["b"], weights["b"])  # integers are left alone
    as_fp32 = read_state_dict(tmp_path / "w.safetensors", torch.float32)
    assert torch.equal(as_fp32["a"], weights["a"].float())


def test_ten_switches_keep_at_most_the_cache_alive(tiny_dir, policy, tmp_path):
    import gc
    import weakref

    manager = _manager(tiny_dir, policy, tmp_path)
    manager.settings.values["sd_checkpoint_cache"] = 1
    alive = []
    for i in range(10):
        model, _ = manager.get(["tiny-sd1", "tiny-sd2v", "tiny-sdxl"][i % 3])
        alive.append(weakref.ref(model))
        del model
    gc.collect()
    assert sum(ref() is not None for ref in alive) <= 2  # the current model plus one cached
