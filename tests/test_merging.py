"""The checkpoint merger: A1111's formulas tensor for tensor, precision, VAE bake-in, discards, metadata, errors."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.errors import CheckpointError, ValidationError
from modules.merging import merge_by_name, merge_checkpoints
from tests.tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merge") / "models" / "Stable-diffusion"
    return {name: save_tiny_checkpoint(folder / f"{name}.safetensors", family, seed=seed)
            for name, family, seed in (("a", "sd1", 0), ("b", "sd1", 1), ("c", "sd1", 2), ("xl", "sdxl", 0))}


def merged(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


def test_weighted_sum_at_zero_is_a_and_at_one_is_b(models, tmp_path):
    a, b = merged(models["a"]), merged(models["b"])
    at0 = merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, multiplier=0.0, precision="keep",
                            custom_name="m0")
    at1 = merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, multiplier=1.0, precision="keep",
                            custom_name="m1")
    assert_same(merged(at0.path), a)
    # "model" keys blend; like A1111 every other key (none in an SD1 file) would come from A
    assert_same(merged(at1.path), b)
    assert at0.merged_keys == len(a) and at0.copied_keys == 0


def test_weighted_sum_in_between_and_fp16_output(models, tmp_path):
    result = merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, multiplier=0.25)
    out, a, b = merged(result.path), merged(models["a"]), merged(models["b"])
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert out[key].dtype == torch.float16
    assert torch.allclose(out[key].float(), a[key] * 0.75 + b[key] * 0.25, atol=1e-3)
    ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    if ids in a:
        assert out[ids].dtype == a[ids].dtype and torch.equal(out[ids], a[ids])
    assert result.path.name == "0.75(a) + 0.25(b).safetensors"  # A1111's default name
    assert (result.path.parent / "0.75(a) + 0.25(b).config.json").exists()  # A's sibling config came along


def test_add_difference(models, tmp_path):
    result = merge_checkpoints(models["a"], models["b"], models["c"], output_dir=tmp_path,
                               interp_method="Add difference", multiplier=0.5, precision="fp32")
    out, a, b, c = (merged(p) for p in (result.path, models["a"], models["b"], models["c"]))
    for key in ("model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_out.weight"):
        assert torch.allclose(out[key], a[key] + (b[key] - c[key]) * 0.5, atol=1e-6)
    assert result.path.name == "a + 0.5(b - c).safetensors"


def test_bf16_output_and_regex_discard(models, tmp_path):
    result = merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, precision="bf16",
                               discard_weights=r"^first_stage_model\.encoder\.", custom_name="slim")
    out = merged(result.path)
    assert not any(k.startswith("first_stage_model.encoder.") for k in out)
    assert any(k.startswith("first_stage_model.decoder.") for k in out)
    assert result.discarded_keys > 0
    assert out["model.diffusion_model.out.2.weight"].dtype == torch.bfloat16


def test_bake_in_vae(models, tmp_path):
    vae = {k.removeprefix("first_stage_model."): torch.full_like(v, 0.5) for k, v in merged(models["c"]).items()
           if k.startswith("first_stage_model.")}
    vae_path = tmp_path / "flat.vae.safetensors"
    save_file(vae, str(vae_path))
    result = merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, precision="fp32", bake_in_vae=vae_path)
    out = merged(result.path)
    assert torch.all(out["first_stage_model.decoder.conv_out.weight"] == 0.5)
    assert json.loads(result.metadata["sd_merge_recipe"])["bake_in_vae"] == "flat.vae.safetensors"


def test_merge_recipe_metadata(models, tmp_path):
    result = merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, multiplier=0.3,
                               metadata_json='{"modelspec.title": "my merge"}')
    with safe_open(str(result.path), "pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt" and metadata["modelspec.title"] == "my merge"
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.3
    assert recipe["save_as_half"] is True and recipe["tertiary_model_hash"] is None
    assert len(recipe["primary_model_hash"]) == 64
    models_info = json.loads(metadata["sd_merge_models"])
    assert {m["name"] for m in models_info.values()} == {"a.safetensors", "b.safetensors"}
    assert all(len(m["legacy_hash"]) == 8 for m in models_info.values())


def test_mismatched_models_are_refused_before_writing(models, tmp_path):
    with pytest.raises(CheckpointError, match="don't match"):
        merge_checkpoints(models["a"], models["xl"], output_dir=tmp_path, custom_name="bad")
    a = merged(models["a"])
    a["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 1, 1)
    save_file(a, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match=r"out\.2\.weight is \[4, 32, 3, 3\] in A and \[4, 32, 1, 1\] in B"):
        merge_checkpoints(models["a"], tmp_path / "odd.safetensors", output_dir=tmp_path, custom_name="bad")
    assert not list(tmp_path.glob("bad*"))


def test_bad_arguments_name_their_field(models, tmp_path):
    with pytest.raises(ValidationError) as err:
        merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, interp_method="Add difference")
    assert err.value.field == "tertiary_model_name"
    with pytest.raises(ValidationError) as err:
        merge_checkpoints(models["a"], models["b"], output_dir=tmp_path, discard_weights="([")
    assert err.value.field == "discard_weights"
    with pytest.raises(ValidationError) as err:
        merge_checkpoints(models["a"], models["b"], output_dir=models["a"].parent, custom_name="a")
    assert err.value.field == "custom_name"  # would overwrite an input


def test_merge_by_name_writes_into_the_checkpoint_folder_and_loads(models, policy):
    from modules.model_manager import ModelManager
    from modules.paths import Paths
    from modules.settings import Settings

    root = models["a"].parent.parent.parent
    manager = ModelManager(Paths.from_flags(data_dir=str(root)), policy, Settings())
    result = merge_by_name(manager, "a", "b", multiplier=0.5, custom_name="half", save_as_half=False)
    assert result.path == models["a"].parent / "half.safetensors"
    assert manager.checkpoints.find("half") is not None
    model, _ = manager.get("half")
    assert model.family.name == "sd1"


def test_inpainting_a_merges_its_first_four_input_channels(models, tmp_path):
    inpaint = save_tiny_checkpoint(tmp_path / "inp.safetensors", "sd1", inpainting=True, seed=3)
    result = merge_checkpoints(inpaint, models["b"], output_dir=tmp_path, multiplier=1.0, precision="fp32",
                               custom_name="mix")
    assert result.is_inpainting and result.path.name == "mix.inpainting.safetensors"
    key = "model.diffusion_model.input_blocks.0.0.weight"
    out, a, b = merged(result.path)[key], merged(inpaint)[key], merged(models["b"])[key]
    assert out.shape[1] == 9 and torch.equal(out[:, :4], b[:, :4]) and torch.equal(out[:, 4:], a[:, 4:])
    with pytest.raises(CheckpointError, match="A must be the inpainting model"):
        merge_checkpoints(models["b"], inpaint, output_dir=tmp_path, custom_name="wrong")
