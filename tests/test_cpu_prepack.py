"""Packed oneDNN conv weights on the CPU (modules/cpu_prepack.py): the same numbers as the plain path, kept
in step with the weights when they are patched or replaced, and switched by the `cpu_prepack` setting."""
import numpy as np
import pytest
import torch

from modules import cpu_prepack
from modules.settings import Settings
from tests.builtin_helpers import close, make_engine, run
from tests.test_builtin_lora import write_lora

pytestmark = pytest.mark.skipif(cpu_prepack.unavailable_reason(torch.device("cpu")) is not None,
                                reason="this torch has no oneDNN")


def conv_pair(dtype: torch.dtype, **kwargs) -> tuple[torch.nn.Conv2d, torch.nn.Conv2d]:
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(32, 64, 3, **kwargs).to(dtype).eval()
    packed = torch.nn.Conv2d(32, 64, 3, **kwargs).to(dtype).eval()
    packed.load_state_dict(plain.state_dict())
    assert cpu_prepack.prepack(packed) == 1
    return plain, packed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_packed_conv_gives_the_plain_convs_numbers(dtype, layout):
    plain, packed = conv_pair(dtype, padding=1, stride=2)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: one rounding step, where eager sums in another order
    for size in (16, 24):  # a second shape reuses the weight packed for the first
        x = torch.randn(2, 32, size, size).to(dtype).to(memory_format=layout)
        with torch.inference_mode():
            assert torch.allclose(packed(x).float(), plain(x).float(), rtol=tolerance, atol=tolerance)
    assert cpu_prepack._PACKED in packed.__dict__


def test_weight_edited_in_place_or_replaced_is_packed_again():
    plain, packed = conv_pair(torch.float32, padding=1)
    x = torch.randn(1, 32, 8, 8)

    def same() -> bool:
        with torch.inference_mode():
            return torch.allclose(packed(x), plain(x), atol=1e-5)

    assert same()
    with torch.no_grad():  # in place, as A1111's LoRA code does
        plain.weight.mul_(2)
        packed.weight.mul_(2)
    assert same()
    replacement = torch.randn_like(plain.weight)
    plain.weight.data = replacement.clone()  # swapped, as weight_patching and offloading do
    packed.weight.data = replacement.clone()
    assert same()


def test_grad_and_odd_inputs_take_the_plain_path():
    plain, packed = conv_pair(torch.float32, padding=1)
    x = torch.randn(1, 32, 8, 8, requires_grad=True)
    out = packed(x)
    out.sum().backward()  # the packed op has no backward: eager must have run
    assert x.grad is not None and torch.allclose(out, plain(x), atol=1e-5)
    with torch.inference_mode():  # an unbatched input and a dtype mismatch are left to eager
        assert torch.allclose(packed(x[0].detach()), plain(x[0].detach()), atol=1e-5)
        with pytest.raises(RuntimeError):
            packed(x.detach().double())


def test_unpack_restores_the_plain_module():
    _, packed = conv_pair(torch.float32, padding=1)
    with torch.inference_mode():
        packed(torch.randn(1, 32, 8, 8))
    assert cpu_prepack.is_prepacked(packed)
    cpu_prepack.unpack(packed)
    assert not cpu_prepack.is_prepacked(packed) and "forward" not in packed.__dict__
    assert cpu_prepack._PACKED not in packed.__dict__
    assert set(packed.state_dict()) == {"weight", "bias"}  # packing never adds to what is saved


def test_not_offered_off_the_cpu():
    assert "CPU" in cpu_prepack.unavailable_reason(torch.device("cuda"))
    assert "CPU" in cpu_prepack.unavailable_reason(torch.device("mps"))
    elsewhere = torch.nn.Conv2d(4, 4, 3, device="meta")  # sync leaves a module off the CPU plain
    cpu_prepack.sync([elsewhere], True)
    assert not cpu_prepack.is_prepacked(elsewhere)
    on_cpu = torch.nn.Conv2d(4, 4, 3)
    cpu_prepack.sync([on_cpu], True)
    assert cpu_prepack.is_prepacked(on_cpu)


def test_setting_switches_packing_and_images_stay_the_same_with_a_lora(tiny_dir, policy, tmp_path):
    engine = make_engine(tiny_dir, policy, tmp_path, "lora")
    try:
        write_lora(engine.paths.lora_dir / "film.safetensors", "sd1", "diffusers")
        engine.settings.set("cpu_prepack", False)
        plain, _, _ = run(engine)
        plain_lora, _, _ = run(engine, prompt="a lighthouse <lora:film:1>")
        model = engine.models.current
        assert not cpu_prepack.is_prepacked(model.unet) and not cpu_prepack.is_prepacked(model.vae)

        engine.settings.set("cpu_prepack", True)
        packed, _, _ = run(engine)
        assert cpu_prepack.is_prepacked(model.unet) and cpu_prepack.is_prepacked(model.vae)
        packed_lora, _, _ = run(engine, prompt="a lighthouse <lora:film:1>")  # LoCon patches convs: repacked
        packed_again, _, _ = run(engine)  # and the restored weights are packed again
        assert np.abs(plain_lora - plain).mean() > 1.0
        for got, want in ((packed, plain), (packed_lora, plain_lora), (packed_again, plain)):
            assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    finally:
        close(engine)


def test_setting_is_on_by_default(tmp_path):
    assert Settings(file=tmp_path / "config.json").get("cpu_prepack") is True
