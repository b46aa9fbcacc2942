"""Model upscalers through the registry: spandrel detection, safe loading, names, tiling, refresh, extras saving."""
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from modules import upscaling
from modules.devices import DevicePolicy
from modules.errors import UnsafeFileError, ValidationError
from modules.model_upscalers import choose_dtype, display_name, scale_in_name, tile_starts
from modules.paths import Paths
from modules.settings import Settings

GC = 32  # spandrel's RRDBNet always uses 32 growth channels


def tiny_esrgan_state(nf: int = 8, nb: int = 1, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in Real-ESRGAN's RRDBNet layout (conv_first, body.N.rdbM.convK, conv_body, conv_upN, conv_hr,
    conv_last), with few blocks and channels: what spandrel's ESRGAN detection reads."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int) -> None:
        sd[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) / (in_ch * 9) ** 0.5
        sd[f"{name}.bias"] = torch.randn(out_ch, generator=g) * 0.01

    conv("conv_first", nf, 3)
    for block in range(nb):
        for rdb in (1, 2, 3):
            for k in range(1, 6):
                conv(f"body.{block}.rdb{rdb}.conv{k}", GC if k < 5 else nf, nf + (k - 1) * GC)
    conv("conv_body", nf, nf)
    for up in range(1, int(np.log2(scale)) + 1):
        conv(f"conv_up{up}", nf, nf)
    conv("conv_hr", nf, nf)
    conv("conv_last", 3, nf)
    return sd


def photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2))


CPU = DevicePolicy(torch.device("cpu"), torch.float32, torch.float32, False)


@pytest.fixture()
def data_dir(tmp_path):
    """A data dir with one tiny ESRGAN per naming style; the registry is emptied of them afterwards."""
    esrgan = tmp_path / "models" / "ESRGAN"
    real = tmp_path / "models" / "RealESRGAN"
    esrgan.mkdir(parents=True)
    real.mkdir(parents=True)
    save_file(tiny_esrgan_state(), str(esrgan / "tiny.safetensors"))  # no scale in the name
    torch.save({"params_ema": tiny_esrgan_state(scale=2, seed=1)}, real / "2x-TinyReal.pth")  # Real-ESRGAN nesting
    yield tmp_path
    upscaling.refresh_model_upscalers(Paths.from_flags(data_dir=str(tmp_path / "empty")), CPU)


def refresh(root: Path, **settings) -> list[str]:
    config = Settings()
    for name, value in settings.items():
        config.set(name, value, save=False)
    return upscaling.refresh_model_upscalers(Paths.from_flags(data_dir=str(root)), CPU, config)


def test_scale_in_file_names():
    assert scale_in_name("4x-UltraSharp") == 4
    assert scale_in_name("RealESRGAN_x4plus") == 4
    assert scale_in_name("ESRGAN_4x") == 4
    assert scale_in_name("2xNomosUni") == 2
    assert scale_in_name("1x_ReFocus") == 1
    assert scale_in_name("UltraSharp") is None and scale_in_name("SwinIR_large") is None
    assert display_name("UltraSharp", 4) == "UltraSharp (4x)"
    assert display_name("4x-UltraSharp", 4) == "4x-UltraSharp"


def test_model_files_join_the_registry_with_their_scale(data_dir):
    names = refresh(data_dir)
    assert names == ["2x-TinyReal", "tiny (4x)"] or sorted(names) == ["2x-TinyReal", "tiny (4x)"]
    listed = {u["name"]: u for u in upscaling.list_upscalers()}
    assert listed["tiny (4x)"]["scale"] == 4 and listed["2x-TinyReal"]["scale"] == 2
    assert listed["tiny (4x)"]["model_path"].endswith("tiny.safetensors")
    assert [u["name"] for u in upscaling.list_upscalers()][:3] == ["None", "Lanczos", "Nearest"]


def test_tiled_run_equals_untiled_run(data_dir):
    refresh(data_dir, ESRGAN_tile=0)
    untiled = np.asarray(upscaling.get("tiny (4x)").run(photo(48, 32), 192, 128), dtype=int)
    refresh(data_dir, ESRGAN_tile=24, ESRGAN_tile_overlap=8)  # 3 x 2 tiles on a 48x32 image
    assert tile_starts(48, 24, 8) == [0, 12, 24] and tile_starts(32, 24, 8) == [0, 8]
    tiled = np.asarray(upscaling.get("tiny (4x)").run(photo(48, 32), 192, 128), dtype=int)
    assert tiled.shape == untiled.shape == (128, 192, 3)
    assert np.abs(tiled - untiled).max() <= 2
    assert np.abs(tiled - untiled).mean() < 0.05


def test_model_runs_until_the_size_is_covered_then_resizes_exactly(data_dir):
    refresh(data_dir)
    two_x = upscaling.get("2x-TinyReal")
    assert two_x.run(photo(), 100, 70).size == (100, 70)  # one 2x pass (128x96), then Lanczos down
    assert two_x.run(photo(32, 24), 256, 192).size == (256, 192)  # three 2x passes
    image, info = upscaling.run_extras(photo(), upscaling_resize=2, upscaler_1="tiny (4x)")
    assert image.size == (128, 96)
    assert info == "Postprocess upscale by: 2, Postprocess upscaler: tiny (4x)"


def test_refresh_drops_removed_files(data_dir):
    refresh(data_dir)
    upscaling.get("tiny (4x)").run(photo(), 256, 192)  # loaded and cached
    (data_dir / "models" / "ESRGAN" / "tiny.safetensors").unlink()
    assert refresh(data_dir) == ["2x-TinyReal"]
    with pytest.raises(ValidationError):
        upscaling.get("tiny (4x)")
    from modules import model_upscalers

    assert model_upscalers.runtime().loaded_path is None  # the removed model was released


def test_files_that_are_not_upscalers_are_skipped(data_dir):
    save_file({"foo.weight": torch.zeros(3, 3)}, str(data_dir / "models" / "ESRGAN" / "notamodel.safetensors"))
    assert "notamodel (4x)" not in refresh(data_dir) and len(refresh(data_dir)) == 2


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pickle_that_runs_code_is_refused(data_dir, capsys):
    with open(data_dir / "models" / "ESRGAN" / "4x-evil.pth", "wb") as f:
        pickle.dump({"params": Evil()}, f)
    refresh(data_dir)
    with pytest.raises(UnsafeFileError):
        upscaling.get("4x-evil").run(photo(), 256, 192)
    assert "pickled code ran" not in capsys.readouterr().out


def test_dtype_follows_the_policy_where_the_architecture_allows():
    class Desc:
        supports_half, supports_bfloat16 = True, True

    bf16_cpu = DevicePolicy(torch.device("cpu"), torch.bfloat16, torch.bfloat16, True)
    assert choose_dtype(Desc(), CPU) == torch.float32
    assert choose_dtype(Desc(), bf16_cpu) == torch.bfloat16
    Desc.supports_bfloat16 = False
    assert choose_dtype(Desc(), bf16_cpu) == torch.float32


def test_torchvision_standin_provides_what_spandrel_imports():
    from modules.torchvision_standin import ensure_torchvision

    ensure_torchvision()
    from torchvision.transforms.functional import InterpolationMode, normalize, rotate  # noqa: F401

    x = torch.ones(3, 2, 2)
    assert torch.allclose(normalize(x, [0.5] * 3, [0.5] * 3), torch.ones(3, 2, 2))
    assert "spandrel" not in sys.modules or sys.modules["spandrel"].__version__ == "0.4.2"


def test_hires_fix_can_use_a_model_upscaler(data_dir, sd1_model):
    from modules.processing import generate
    from modules.request import GenerationRequest

    refresh(data_dir)
    request = GenerationRequest(prompt="a cat", seed=1, steps=2, width=64, height=64, enable_hr=True, hr_scale=2,
                                hr_upscaler="2x-TinyReal", denoising_strength=0.5)
    result = generate(request, sd1_model)
    assert result.images[0].size == (128, 128)


def test_save_extras_keeps_the_source_infotext_and_adds_an_extras_chunk(tmp_path):
    from modules.image_saving import save_image

    source_path = save_image(photo(), tmp_path / "src", seed=5, infotext="a cat\nSteps: 3, Seed: 5",
                             extra_pnginfo={"source": "hello"})
    source = Image.open(source_path)
    result, info = upscaling.run_extras(source, upscaling_resize=2, upscaler_1="Lanczos")
    folder = upscaling.extras_folder(tmp_path / "outputs")
    path = upscaling.save_extras(result, folder, info, source=source)
    assert path == tmp_path / "outputs" / "extras-images" / "00000.png"
    saved = Image.open(path)
    assert saved.info["parameters"] == "a cat\nSteps: 3, Seed: 5"
    assert saved.info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert saved.info["postprocessing"] == saved.info["extras"]
    assert saved.info["source"] == "hello"
    jpg = upscaling.save_extras(result, folder, info, source=source, extension="jpg")
    from modules.infotext import read_image_infotext

    assert read_image_infotext(Image.open(jpg))[0] == info  # one comment: A1111 puts the extras text there
