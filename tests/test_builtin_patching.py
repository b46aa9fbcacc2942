"""The public model-patch API the built-in extensions use (modules/weight_patching.py, attention_hooks.py)."""
from types import SimpleNamespace

import pytest
import torch

from modules.attention_hooks import attention_kv_hooks, attention_layers, set_attention_kv_hook
from modules.weight_patching import WeightPatchError, clear_weight_deltas, patched_weights, set_weight_deltas
from tests.builtin_helpers import components


def tiny_model(dtype=torch.float32, channels_last=False):
    parts = components("sd1")
    unet = parts["unet"].to(dtype)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return SimpleNamespace(unet=unet, vae=parts["vae"], text_encoders=[parts["text_encoder"]])


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True)])
def test_two_owners_add_up_and_each_restores_exactly(dtype, channels_last):
    model = tiny_model(dtype, channels_last)
    name = "down_blocks.0.resnets.0.conv1.weight"
    param = model.unet.get_submodule("down_blocks.0.resnets.0.conv1").weight
    original, pointer = param.detach().clone(), param.data_ptr()
    delta_a, delta_b = torch.full(param.shape, 0.25), torch.full(param.shape, -0.5)
    set_weight_deltas(model, "a", {("unet", name): delta_a})
    set_weight_deltas(model, "b", {("unet", name): delta_b})
    expected = (original.float() + (delta_a + delta_b)).to(dtype)  # original + the sum of the deltas
    assert torch.equal(param.detach(), expected) and param.dtype == dtype
    assert param.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert patched_weights(model) == {"a": [("unet", name)], "b": [("unet", name)]}
    clear_weight_deltas(model, "a")
    assert torch.equal(param.detach(), (original.float() + delta_b).to(dtype))
    clear_weight_deltas(model, "b")
    assert param.data_ptr() == pointer and torch.equal(param.detach(), original)
    assert patched_weights(model) == {}


def test_bad_deltas_change_nothing():
    model = tiny_model()
    param = model.unet.conv_in.weight
    before = param.detach().clone()
    with pytest.raises(WeightPatchError, match="no weight"):
        set_weight_deltas(model, "x", {("unet", "conv_in.weight"): torch.ones_like(param),
                                       ("unet", "nope.weight"): torch.ones(1)})
    with pytest.raises(WeightPatchError, match="doesn't fit"):
        set_weight_deltas(model, "x", {("unet", "conv_in.weight"): torch.ones(3)})
    with pytest.raises(WeightPatchError, match="no model component"):
        set_weight_deltas(model, "x", {("text_encoder_2", "a.weight"): torch.ones(1)})
    assert torch.equal(param.detach(), before) and patched_weights(model) == {}
    # Lazy deltas are computed when the weight is built; a wrong one puts the owner's previous deltas back.
    set_weight_deltas(model, "x", {("unet", "conv_in.weight"): lambda: torch.ones_like(param)})
    patched = param.detach().clone()
    assert torch.equal(patched, before + 1)
    with pytest.raises(WeightPatchError, match="doesn't fit"):
        set_weight_deltas(model, "x", {("unet", "conv_in.weight"): lambda: torch.ones(3),
                                       ("unet", "conv_out.weight"): lambda: torch.ones(1)})
    assert torch.equal(param.detach(), patched) and patched_weights(model) == {"x": [("unet", "conv_in.weight")]}
    clear_weight_deltas(model, "x")
    assert torch.equal(param.detach(), before)


def test_attention_hook_sees_every_layer_and_comes_off():
    model = tiny_model()
    layers = [layer for layer, _ in attention_layers(model.unet)]
    assert {layer.is_cross for layer in layers} == {True, False}
    assert {layer.context_dim for layer in layers if layer.is_cross} == {32}
    seen = []
    set_attention_kv_hook(model, "probe", lambda x, which, layer: seen.append((which, layer.name)) or x * 2)
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 5, 32)
    hooked = model.unet(x, 10, encoder_hidden_states=ctx).sample
    assert len(seen) == 2 * len(layers) and attention_kv_hooks(model) == ["probe"]
    set_attention_kv_hook(model, "probe", None)
    plain = model.unet(x, 10, encoder_hidden_states=ctx).sample
    assert attention_kv_hooks(model) == [] and not torch.equal(hooked, plain)
    assert len(seen) == 2 * len(layers)  # no hook runs any more
