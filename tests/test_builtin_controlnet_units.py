"""The ControlNet built-in's parts that need no engine: preprocessors, unit parsing, infotext, fitting maps,
model files and family detection, and the UI's handler functions."""
import json
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.extensions import BUILTIN_DIR
from tests.test_api_helpers import b64_png
from tests.tiny_models import build_tiny_controlnet, export_ldm_controlnet

sys.path.insert(0, str(BUILTIN_DIR / "controlnet"))
import controlnet_apply  # noqa: E402  (the extension's own modules)
import controlnet_models  # noqa: E402
import controlnet_preprocessors as pre  # noqa: E402
import controlnet_ui  # noqa: E402
import controlnet_units as units  # noqa: E402


def shapes(w=64, h=48) -> Image.Image:
    image = Image.new("RGB", (w, h), (40, 60, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, w // 2, h // 2), fill=(250, 250, 250))
    draw.ellipse((w // 2, h // 3, w - 4, h - 4), fill=(10, 10, 10))
    return image


def test_canny_is_opencvs_canny_at_the_images_own_resolution():
    rgb = np.asarray(shapes())
    out = pre.preprocess("canny", rgb, resolution=48, a=50, b=150)
    expected = cv2.Canny(rgb, 50, 150)
    assert out.shape == (48, 64, 3)
    assert np.array_equal((out[..., 0] * 255).astype(np.uint8), expected) and expected.any()
    assert np.array_equal(out[..., 0], out[..., 2])
    defaults = pre.preprocess("canny", rgb, resolution=48)  # -1 / None thresholds: 100 and 200
    assert np.array_equal((defaults[..., 0] * 255).astype(np.uint8), cv2.Canny(rgb, 100, 200))


def test_model_free_preprocessors_give_maps_of_the_right_kind():
    rgb = np.asarray(shapes())
    assert np.allclose(pre.preprocess("invert", rgb, 48), 1 - rgb / 255.0)
    binary = pre.preprocess("binary", rgb, 48, a=128)
    assert set(np.unique(binary)) == {0.0, 1.0}
    assert binary[10, 10, 0] == 0.0 and binary[40, 50, 0] == 1.0  # white box → black, dark disc → white lines
    for name in ("scribble_xdog", "lineart_standard", "shuffle"):
        out = pre.preprocess(name, rgb, 48)
        assert out.shape == (48, 64, 3) and out.min() >= 0 and out.max() <= 1 and out.std() > 0, name
    assert pre.preprocess("tile_resample", rgb, a=4).shape == (12, 16, 3)
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 255
    inpaint = pre.preprocess("inpaint_only", rgb, mask=mask)
    assert (inpaint[:, :32] == -1).all() and np.allclose(inpaint[:, 32:], rgb[:, 32:] / 255.0)
    assert pre.preprocess("canny", rgb, resolution=96).shape == (96, 128, 3)  # short side → resolution


def test_preprocessors_needing_weights_say_what_they_need(tmp_path, monkeypatch):
    monkeypatch.setattr(pre.api, "model_dir", lambda kind: tmp_path)
    detail = pre.module_detail(pre.PREPROCESSORS["softedge_hed"])
    assert "ControlNetHED.pth" in detail["unavailable"] and detail["model_free"] is False
    assert "unavailable" not in pre.module_detail(pre.PREPROCESSORS["canny"])
    assert pre.module_detail(pre.PREPROCESSORS["canny"])["sliders"][1] == {
        "name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1}
    with pytest.raises(ValueError, match="depth_midas.*dpt_hybrid-midas-501f0c75.pt"):
        pre.preprocess("depth_midas", np.asarray(shapes()))
    assert "depth_midas" not in controlnet_ui.module_choices() and "canny" in controlnet_ui.module_choices()


def test_units_read_as_sd_webui_controlnet_reads_them():
    unit = units.unit_from_args({"Input_Image": b64_png(shapes(), prefix=True), "MODULE": "Canny",
                                 "control_mode": 2, "resize_mode": "Resize and Fill", "Weight": "0.5",
                                 "pixel_perfect": "true", "guidance_end": 0.5})
    assert unit.enabled and unit.image.size == (64, 48) and unit.weight == 0.5 and unit.pixel_perfect
    assert (unit.control_mode, unit.resize_mode, unit.module) == ("ControlNet is more important",
                                                                  "Resize and Fill", "Canny")
    assert units.unit_from_args({"control_mode": "My prompt is more important", "resize_mode": 0}).resize_mode == \
        "Just Resize"
    assert units.unit_from_args({"resize_mode": "Scale to Fit (Inner Fit)"}).resize_mode == "Crop and Resize"
    assert not units.unit_from_args(None).enabled and not units.unit_from_args({}).enabled
    paired = units.unit_from_args({"image": {"image": b64_png(shapes()), "mask": b64_png(shapes().convert("L"))}})
    assert paired.mask is not None and paired.image is not None
    with pytest.raises(units.UnitError, match="control_mode"):
        units.unit_from_args({"control_mode": "loud"})
    with pytest.raises(units.UnitError, match="guidance_start"):
        units.unit_from_args({"guidance_start": 0.8, "guidance_end": 0.2})


def test_infotext_entry_round_trips():
    unit = units.ControlUnit(enabled=True, module="canny", model="tiny-cn [0123abcd]", weight=0.75,
                             processor_res=512, threshold_a=100.0, threshold_b=200.0, guidance_end=0.5)
    text = units.infotext_entry(unit)
    assert text.startswith("Module: canny, Model: tiny-cn [0123abcd], Weight: 0.75, Resize Mode: Crop and Resize, "
                           "Low Vram: False, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, "
                           "Guidance Start: 0.0, Guidance End: 0.5, Pixel Perfect: False, Control Mode: Balanced")
    params = {"ControlNet 0": text, "Steps": "20"}
    units.on_infotext_pasted("", params)
    assert params["ControlNet 0 module"] == "canny" and params["ControlNet 0 weight"] == 0.75
    [restored] = units.units_from_infotext(params)
    again = units.unit_from_args(restored)
    assert (again.module, again.model, again.weight, again.guidance_end, again.threshold_b) == \
        ("canny", "tiny-cn [0123abcd]", 0.75, 0.5, 200.0)


def test_fitting_maps_and_pixel_perfect():
    wide = np.zeros((20, 40, 3), np.float32)
    wide[:, :20] = 1.0
    assert controlnet_apply.fit_map(wide, 32, 32, "Just Resize").shape == (32, 32, 3)
    cropped = controlnet_apply.fit_map(wide, 32, 32, "Crop and Resize")
    assert cropped.shape == (32, 32, 3) and cropped[:, :16].min() == 1.0 and cropped[:, 16:].max() == 0.0
    filled = controlnet_apply.fit_map(wide, 32, 32, "Resize and Fill")
    assert filled.shape == (32, 32, 3) and filled[:8].max() == 0.0 and filled[8:24, :16].min() == 1.0
    assert controlnet_apply.pixel_perfect_resolution(20, 40, 64, 64, "Crop and Resize") == 64
    assert controlnet_apply.pixel_perfect_resolution(20, 40, 64, 64, "Resize and Fill") == 32


def test_family_detection_and_loading_both_layouts(tmp_path):
    for family in ("sd1", "sdxl"):
        net = build_tiny_controlnet(family)
        ldm = export_ldm_controlnet(net)
        assert controlnet_models.detect_family(controlnet_models._strip_prefix(ldm)) == family
        assert controlnet_models.detect_family(net.state_dict()) == family
    path = tmp_path / "cn.safetensors"
    from safetensors.torch import save_file
    net = build_tiny_controlnet("sd1")
    save_file(export_ldm_controlnet(net), str(path))
    (tmp_path / "cn.config.json").write_text('{"family": "sd1", "controlnet": %s}' % net.to_json_string())
    loaded, family = controlnet_models.load_controlnet(path)
    assert family == "sd1"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(controlnet_models.ControlNetError, match="SDXL checkpoints, but the loaded checkpoint is SD1"):
        controlnet_models.check_fits("x", "sdxl", "sd1")
    controlnet_models.check_fits("x", "sd2", "sd2-v")
    with pytest.raises(controlnet_models.ControlNetError, match="not a ControlNet"):
        controlnet_models.detect_family({"lora_unet_x.alpha": torch.zeros(())})


def test_full_size_files_in_the_original_layout_fit_the_shipped_configs(tmp_path):
    """Full-size SD1.5, SD2.1 and SDXL ControlNets (on the meta device: keys and shapes, no memory) written in
    lllyasviel's layout: the family is detected and the converted keys and shapes are exactly the model's."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    for family in ("sd1", "sd2", "sdxl"):
        shipped = json.loads((controlnet_models.CONFIGS_DIR / family / "config.json").read_text())
        with init_empty_weights():
            net = ControlNetModel.from_config({k: v for k, v in shipped.items() if not k.startswith("_")})
        sd = controlnet_models._strip_prefix(export_ldm_controlnet(net))
        assert controlnet_models.detect_family(sd) == family
        config, _ = controlnet_models.controlnet_config(tmp_path / "file.safetensors", sd, family)
        converted = controlnet_models._convert(sd, config)
        assert {k: tuple(v.shape) for k, v in converted.items()} == \
            {k: tuple(v.shape) for k, v in net.state_dict().items()}, family


def test_shipped_configs_build_full_size_controlnets():
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    sizes = {}
    for family in ("sd1", "sd2", "sdxl"):
        config = controlnet_models.controlnet_config(controlnet_models.CONFIGS_DIR / "none.safetensors", {}, family)[0]
        with init_empty_weights():
            net = ControlNetModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        sizes[family] = sum(p.numel() for p in net.parameters()) // 1_000_000
    assert sizes == {"sd1": 361, "sd2": 364, "sdxl": 1251}


def test_ui_handlers_build_the_unit_and_preview_what_it_uses():
    image = shapes()
    values = dict(zip(controlnet_ui.FIELDS, [True, image, False, "canny", "tiny [abcd]", 0.8, 0.1, 0.9,
                                             "Balanced", "Just Resize", False, 48, 50, 150, "Both"]))
    args = controlnet_ui.unit_args(*values.values())
    unit = units.unit_from_args(args)
    assert (unit.enabled, unit.module, unit.weight, unit.guidance_start, unit.threshold_a) == \
        (True, "canny", 0.8, 0.1, 50.0)
    shown = controlnet_ui.preview(image, "canny", 48, 50, 150, False, "Just Resize")
    assert np.array_equal(np.asarray(shown)[..., 0], cv2.Canny(np.asarray(image), 50, 150))
    assert controlnet_ui.preview(None, "canny", 512, -1, -1, False, "Just Resize") is None
    resolution, a, b = controlnet_ui.slider_updates("canny")
    assert resolution["visible"] and a["label"] == "Canny Low Threshold" and b["value"] == 200
    assert [u["visible"] for u in controlnet_ui.slider_updates("tile_resample")] == [False, True, False]


def test_weight_preprocessors_run_through_controlnet_aux_from_the_annotators_folder(tmp_path, monkeypatch):
    """controlnet_aux isn't installed here (it needs torchvision): a stand-in with its interface checks that the
    extension hands it the local folder, never a hub name, and reads its output."""
    import importlib.machinery
    import types

    calls = []

    class HEDdetector:
        @classmethod
        def from_pretrained(cls, where):
            calls.append(where)
            return cls()

        def __call__(self, image, **kwargs):
            calls.append(kwargs)
            return np.full((image.shape[0], image.shape[1]), 128, np.uint8)

    fake = types.ModuleType("controlnet_aux")
    fake.__spec__ = importlib.machinery.ModuleSpec("controlnet_aux", None)
    fake.HEDdetector = HEDdetector
    monkeypatch.setitem(sys.modules, "controlnet_aux", fake)
    monkeypatch.setattr(pre.api, "model_dir", lambda kind: tmp_path)
    assert pre.missing_files(pre.PREPROCESSORS["softedge_hed"]) == ["ControlNetHED.pth"]
    (tmp_path / "annotators").mkdir()
    (tmp_path / "annotators" / "ControlNetHED.pth").write_bytes(b"")
    assert pre.missing_files(pre.PREPROCESSORS["softedge_hed"]) == []
    out = pre.preprocess("scribble_hed", np.asarray(shapes()), resolution=96)
    assert out.shape == (96, 128, 3) and np.allclose(out, 128 / 255)
    assert calls[0] == str(tmp_path / "annotators")
    assert calls[1]["detect_resolution"] == 96 and calls[1]["scribble"] is True
    assert "softedge_hed" in controlnet_ui.module_choices()


def test_control_modes_scale_and_mask_the_residuals():
    from modules.sampling import UNetCall

    net = build_tiny_controlnet("sd1")
    torch.manual_seed(0)
    latents = torch.randn(4, 4, 8, 8)
    call = UNetCall(latents, latents, torch.tensor(500), torch.randn(4, 7, 32), None, torch.tensor([0, 1, 0, 1]),
                    torch.tensor([True, True, False, False]), 1, 4, "first")
    control_map = pre.preprocess("canny", np.asarray(shapes()), 48)

    def residuals(mode, **kw):
        unit = units.ControlUnit(enabled=True, weight=0.5, control_mode=mode, **kw)
        out = controlnet_apply.ActiveUnit(0, unit, net, control_map).residuals(call, hires=False)
        return [*out["down_block_additional_residuals"], out["mid_block_additional_residual"]] if out else []

    balanced = residuals("Balanced")
    prompt = residuals("My prompt is more important")
    control = residuals("ControlNet is more important")
    assert len(balanced) == 7 and all(b.abs().sum() > 0 for b in balanced)  # 6 down blocks + the middle one
    for i, (b, p, c) in enumerate(zip(balanced, prompt, control)):
        soft = 0.825 ** (12 - i)
        assert torch.allclose(p, b * soft, atol=1e-6)
        assert (c[:2] == 0).all() and torch.allclose(c[2:], p[2:], atol=1e-5)
    assert residuals("Balanced", guidance_start=0.5) == []  # step 1 of 4 is at 0.25
    assert len(residuals("Balanced", guidance_end=0.25)) == 7
