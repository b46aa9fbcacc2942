"""The built-in LoRA extension (extensions-builtin/lora) through the real engine, with LoRA files written here in
the on-disk formats real files use: kohya's diffusers-style and LDM-style names, SD1 and SDXL."""
import hashlib
import struct
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules import extension_lists, extra_network_cards, extra_networks
from modules.extensions import BUILTIN_DIR
from modules.infotext import parse_infotext, request_from_infotext
from modules.weight_patching import patched_weights
from tests.builtin_helpers import close, components, make_engine, run
from tests.tiny_models import _unet_to_ldm

sys.path.insert(0, str(BUILTIN_DIR / "lora"))
import lora_weights  # noqa: E402  (the extension's own module, for its unit-level checks)

SD1_UNET = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q",
            "down_blocks.1.attentions.0.proj_in",  # a 1x1 conv in SD1
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
            "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2",
            "down_blocks.0.resnets.0.conv1",  # LoCon: a 3x3 conv
            "up_blocks.0.upsamplers.0.conv"]
SD1_TE = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.2.mlp.fc1"]
SDXL_UNET = ["down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
             "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0",
             "mid_block.attentions.0.proj_out", "down_blocks.1.resnets.0.conv2"]
SDXL_TE = ["text_model.encoder.layers.1.self_attn.v_proj", "text_model.encoder.layers.3.mlp.fc2"]


def submodule(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:  # transformers ≥ 5.6: CLIPTextModel without the "text_model." level
        return model.get_submodule(name.removeprefix("text_model."))


def ldm_name(name: str, unet) -> str:
    """The module's name in an A1111 checkpoint, from the tiny models' own LDM exporter."""
    [key] = _unet_to_ldm({name + ".weight": torch.zeros(1)}, unet.config)
    return key.removesuffix(".weight")


def lora_layer(tensors: dict, key: str, module: torch.nn.Module, generator: torch.Generator, rank: int = 4,
               alpha: float = 2.0, scale: float = 0.4) -> None:
    weight = module.weight
    if weight.dim() == 4:  # LoCon: the down conv has the kernel, the up conv is 1x1
        down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=generator)
        up = torch.randn(weight.shape[0], rank, 1, 1, generator=generator)
    else:
        down = torch.randn(rank, weight.shape[1], generator=generator)
        up = torch.randn(weight.shape[0], rank, generator=generator)
    tensors[f"{key}.lora_down.weight"] = down * scale
    tensors[f"{key}.lora_up.weight"] = up * scale
    tensors[f"{key}.alpha"] = torch.tensor(alpha)


def write_lora(path, family: str, style: str, seed: int = 1, metadata=None, te_names=None, unet_names=None):
    """A kohya-format LoRA for the tiny `family` model, UNet names diffusers-style or LDM-style."""
    parts = components(family)
    unet = parts["unet"]
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    unet_names = unet_names if unet_names is not None else (SD1_UNET if family == "sd1" else SDXL_UNET)
    for name in unet_names:
        spelled = name if style == "diffusers" else ldm_name(name, unet)
        lora_layer(tensors, "lora_unet_" + spelled.replace(".", "_"), submodule(unet, name), generator)
    te_names = te_names if te_names is not None else (SD1_TE if family == "sd1" else SDXL_TE)
    encoders = [("lora_te_", parts["text_encoder"])] if family == "sd1" else \
        [("lora_te1_", parts["text_encoder"]), ("lora_te2_", parts["text_encoder_2"])]
    for prefix, encoder in encoders:
        for name in te_names:
            lora_layer(tensors, prefix + name.replace(".", "_"), submodule(encoder, name), generator)
    save_file(tensors, str(path), metadata=metadata)
    return path


def addnet_shorthash(path) -> str:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()[:12]


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, "lora")
    yield eng
    close(eng)


def test_lora_changes_the_image_and_the_next_job_without_it_is_pixel_identical(engine):
    write_lora(engine.paths.lora_dir / "film.safetensors", "sd1", "diffusers")
    base, _, _ = run(engine)
    model = engine.models.current
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in model.unet.named_parameters()}
    with_lora, text, notes = run(engine, prompt="a lighthouse <lora:film:1>")
    assert np.abs(with_lora - base).mean() > 1.0, "the LoRA should visibly change the image"
    assert not [n for n in notes if "LoRA" in n], notes  # every layer of the file found its module
    assert text.startswith("a lighthouse <lora:film:1>\n")  # the tag stays in the infotext
    assert patched_weights(model) == {}
    for name, p in model.unet.named_parameters():  # the very same tensors are back, unchanged
        assert p.data_ptr() == before[name][0] and torch.equal(p.detach(), before[name][1]), name
    again, _, _ = run(engine)
    assert np.array_equal(again, base)


def test_ldm_style_and_diffusers_style_names_load_the_same_lora(engine):
    write_lora(engine.paths.lora_dir / "diffusers-names.safetensors", "sd1", "diffusers")
    write_lora(engine.paths.lora_dir / "ldm-names.safetensors", "sd1", "ldm")
    one, _, notes_one = run(engine, prompt="a lighthouse <lora:diffusers-names:0.8>")
    two, _, notes_two = run(engine, prompt="a lighthouse <lora:ldm-names:0.8>")
    assert not notes_one and not notes_two, (notes_one, notes_two)
    assert np.array_equal(one, two)


def test_text_encoder_and_unet_weights_are_separate(engine):
    write_lora(engine.paths.lora_dir / "film.safetensors", "sd1", "diffusers")
    base, _, _ = run(engine)
    off, _, _ = run(engine, prompt="a lighthouse <lora:film:0>")
    assert np.array_equal(off, base)
    te_only, _, _ = run(engine, prompt="a lighthouse <lora:film:te=1:unet=0>")
    te_only_positional, _, _ = run(engine, prompt="a lighthouse <lora:film:1:0>")
    unet_only, _, _ = run(engine, prompt="a lighthouse <lora:film:0:1>")
    both, _, _ = run(engine, prompt="a lighthouse <lora:film:1>")
    assert np.array_equal(te_only, te_only_positional)
    for image in (te_only, unet_only, both):
        assert not np.array_equal(image, base)
    assert not np.array_equal(te_only, unet_only) and not np.array_equal(te_only, both)
    assert not np.array_equal(unet_only, both)


def test_two_loras_at_once_and_their_hashes(engine):
    first = write_lora(engine.paths.lora_dir / "film.safetensors", "sd1", "diffusers", seed=1)
    (engine.paths.lora_dir / "styles").mkdir()
    second = write_lora(engine.paths.lora_dir / "styles" / "ink.safetensors", "sd1", "ldm", seed=2,
                        unet_names=SD1_UNET[:3], te_names=[])
    base, _, _ = run(engine)
    a, _, _ = run(engine, prompt="a lighthouse <lora:film:0.7>")
    b, _, _ = run(engine, prompt="a lighthouse <lora:ink:0.7>")
    both, text, notes = run(engine, prompt="a lighthouse <lora:film:0.7> <lora:ink:0.7>")
    assert not notes, notes
    for image in (a, b, base):
        assert not np.array_equal(both, image)
    assert f'Lora hashes: "film: {addnet_shorthash(first)}, ink: {addnet_shorthash(second)}"' in text
    again, _, _ = run(engine)
    assert np.array_equal(again, base)


def test_sdxl_lora_with_ldm_names_and_both_text_encoders(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, "lora", checkpoint="tiny-sdxl.safetensors")
    try:
        write_lora(eng.paths.lora_dir / "xl.safetensors", "sdxl", "ldm",
                   metadata={"ss_base_model_version": "sdxl_base_v1-0"})
        base, _, _ = run(eng)
        full, _, notes = run(eng, prompt="a lighthouse <lora:xl:1>")
        te_only, _, _ = run(eng, prompt="a lighthouse <lora:xl:1:0>")
        assert not notes, notes
        assert np.abs(full - base).mean() > 1.0
        assert not np.array_equal(te_only, base) and not np.array_equal(te_only, full)
        again, _, _ = run(eng)
        assert np.array_equal(again, base)
        [entry] = extension_lists.get_list("loras")
        assert entry["name"] == "xl" and entry["metadata"] == {"ss_base_model_version": "sdxl_base_v1-0"}
    finally:
        close(eng)


def test_infotext_hash_finds_the_local_file_when_pasted(engine):
    path = write_lora(engine.paths.lora_dir / "film-grain.safetensors", "sd1", "diffusers",
                      metadata={"ss_output_name": "filmgrain_v2"})
    image, text, _ = run(engine, prompt="a lighthouse <lora:filmgrain_v2:0.6>")  # by its alias
    shorthash = addnet_shorthash(path)
    assert f'Lora hashes: "filmgrain_v2: {shorthash}"' in text
    # Someone else's image: their name for the same file.
    theirs = text.replace("filmgrain_v2", "grainy film")
    # Parsing runs the extensions' on_infotext_pasted, so every paste path (UI, png-info, API) gets this.
    assert parse_infotext(theirs)["Prompt"] == "a lighthouse <lora:filmgrain_v2:0.6>"
    engine.settings.set("lora_preferred_name", "Filename")
    assert parse_infotext(theirs)["Prompt"] == "a lighthouse <lora:film-grain:0.6>"
    pasted = request_from_infotext(theirs)
    assert pasted.prompt == "a lighthouse <lora:film-grain:0.6>"
    job = engine.generate(pasted, timeout=120)
    assert np.array_equal(np.asarray(job.result.images[0]).astype(np.int16), image)


def test_unknown_lora_is_a_note_and_lists_cards_and_unloading(engine):
    write_lora(engine.paths.lora_dir / "film.safetensors", "sd1", "diffusers")
    (engine.paths.lora_dir / "film.preview.png").write_bytes(b"png")
    (engine.paths.lora_dir / "film.json").write_text('{"activation text": "grainy", "preferred weight": 0.8}')
    base, _, _ = run(engine)
    image, text, notes = run(engine, prompt="a lighthouse <lora:nothing-here:1>")
    assert np.array_equal(image, base) and "Lora hashes" not in text
    assert any("LoRA 'nothing-here' not found" in n for n in notes)
    [card] = extra_network_cards.extra_network_cards()["lora"]
    assert card.tag == "<lora:film:0.8> grainy" and card.preview.name == "film.preview.png"
    [entry] = extension_lists.get_list("loras")
    assert set(entry) == {"name", "alias", "path", "metadata"} and entry["alias"] == "film"
    assert extra_networks.default_registry.get("lora") is not None
    close(engine)
    assert extra_networks.default_registry.get("lora") is None and extension_lists.get_list("loras") is None


def test_sdxl_lora_on_sd1_is_reported_not_applied(engine, tmp_path):
    write_lora(engine.paths.lora_dir / "xl.safetensors", "sdxl", "ldm")
    base, _, _ = run(engine)
    image, _, notes = run(engine, prompt="a lighthouse <lora:xl:1>")
    assert any("LoRA 'xl'" in n and "not in this model" in n for n in notes), notes


# -- the extension's delta math, checked against the formulas ----------------------------------------------

def test_loha_lokr_locon_and_peft_layouts():
    g = torch.Generator().manual_seed(0)
    weight = torch.zeros(6, 4)
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=g) for s in ((6, 2), (2, 4), (6, 2), (2, 4)))
    delta, _ = lora_weights.module_delta({"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b,
                                          "alpha": torch.tensor(1.0)}, weight)
    assert torch.allclose(delta, (w1a @ w1b) * (w2a @ w2b) / 2)
    k1, k2a, k2b = torch.randn(2, 2, generator=g), torch.randn(3, 1, generator=g), torch.randn(1, 2, generator=g)
    delta, _ = lora_weights.module_delta({"lokr_w1": k1, "lokr_w2_a": k2a, "lokr_w2_b": k2b,
                                          "alpha": torch.tensor(0.5)}, weight)
    assert torch.allclose(delta, torch.kron(k1, k2a @ k2b) * 0.5)
    conv = torch.zeros(5, 3, 3, 3)
    down, up, mid = torch.randn(2, 3, 1, 1, generator=g), torch.randn(5, 2, 1, 1, generator=g), \
        torch.randn(2, 2, 3, 3, generator=g)
    delta, _ = lora_weights.module_delta({"lora_down.weight": down, "lora_up.weight": up, "lora_mid.weight": mid},
                                         conv)
    expected = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
    assert torch.allclose(delta.reshape(conv.shape), expected)
    groups = lora_weights.group_by_module({
        "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(1),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(1)})
    assert set(groups) == {"lora_unet_down_blocks_1_attentions_0_proj_in",
                           "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"}
    assert set(groups["lora_unet_down_blocks_1_attentions_0_proj_in"]) == {"lora_down.weight"}
