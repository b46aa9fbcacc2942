import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.upscaling import list_upscalers, run_extras


def gradient(w=40, h=30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (h, 1))] * 3, axis=-1))


def test_builtins_are_listed_in_the_api_shape():
    names = [u["name"] for u in list_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert set(list_upscalers()[0]) == {"name", "model_name", "model_path", "model_url", "scale"}


def test_scale_by_and_info_text():
    image, info = run_extras(gradient(), upscaling_resize=2, upscaler_1="Lanczos")
    assert image.size == (80, 60)
    assert info == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


def test_scale_to_with_crop_keeps_exact_size():
    image, info = run_extras(gradient(), resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64,
                             upscaling_crop=True, upscaler_1="Nearest")
    assert image.size == (64, 64)
    assert "Postprocess upscale to: 64x64" in info


def test_second_upscaler_blends_by_visibility():
    lanczos, _ = run_extras(gradient(), upscaler_1="Lanczos")
    nearest, _ = run_extras(gradient(), upscaler_1="Nearest")
    half, info = run_extras(gradient(), upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5)
    expected = (np.asarray(lanczos, float) + np.asarray(nearest, float)) / 2
    assert np.abs(np.asarray(half, float) - expected).max() <= 1
    assert "Postprocess upscaler 2: Nearest" in info


def test_none_leaves_the_image_alone():
    image, info = run_extras(gradient(), upscaler_1="None")
    assert image.size == (40, 30) and info == ""


def test_unknown_upscaler_names_the_field():
    with pytest.raises(ValidationError) as err:
        run_extras(gradient(), upscaler_2="Bogus")
    assert err.value.field == "upscaler_2" and "Lanczos" in str(err.value)
