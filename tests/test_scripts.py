"""Built-in scripts on the tiny SD1 model through the engine: X/Y/Z plot, prompts from file, SD upscale, loopback."""
import numpy as np
import pytest
from PIL import Image

from modules.builtin_scripts import find_script, list_scripts, run_script
from modules.engine import Engine
from modules.errors import ValidationError
from modules.grid_labels import draw_grid_annotations, labels
from modules.paths import Paths
from modules.request import GenerationRequest
from modules.settings import Settings
from scripts.loopback import denoising_strength, run_loopback
from scripts.prompts_from_file import parse_line, run_prompts_from_file
from scripts.sd_upscale import combine_grid, split_grid
from scripts.xyz_grid import run_xyz_plot


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    paths = Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "outputs"))
    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    eng = Engine(paths, policy, settings)
    yield eng
    eng.shutdown()


def req(**changes) -> GenerationRequest:
    base = dict(prompt="a lighthouse by the sea", negative_prompt="blurry", seed=42, steps=2, width=64, height=64,
                sampler_name="Euler", cfg_scale=6.0)
    base.update(changes)
    return GenerationRequest(**base)


def gradient(w=64, h=64) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)],
                                    axis=-1))


def dark_pixels(image: Image.Image) -> int:
    return int((np.asarray(image.convert("L")) < 128).sum())


# --------------------------------------------------------------------------- X/Y/Z plot


def test_xyz_grid_has_every_cell_and_its_labels(engine, tmp_path):
    result = run_xyz_plot(engine, req(), "Steps", "1-2", "CFG Scale", "4, 6.5")
    grid = result.images[0]
    pad_left = 64 * 3 // 4  # A1111: row labels take 3/4 of a cell
    pad_top = grid.height - 2 * 64
    assert grid.width == pad_left + 2 * 64 and pad_top > 0
    assert dark_pixels(grid.crop((pad_left, 0, grid.width, pad_top))) > 0  # column labels are drawn
    assert dark_pixels(grid.crop((0, pad_top, pad_left, grid.height))) > 0  # row labels too
    assert [(c.x, c.y) for c in result.cells] == [(1, 4.0), (2, 4.0), (1, 6.5), (2, 6.5)]
    assert "Steps: 2" in result.cells[1].infotext and "CFG scale: 6.5" in result.cells[3].infotext
    # the cell's pixels are the job's image
    assert np.array_equal(np.asarray(grid.crop((pad_left + 64, pad_top, pad_left + 128, pad_top + 64))),
                          np.asarray(result.cells[1].image))
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: CFG Scale" in result.infotexts[0]
    saved = list((tmp_path / "outputs" / "txt2img-grids").rglob("xyz_grid-*.png"))
    assert len(saved) == 1 and len(result.images) == 1 and not result.errors


def test_xyz_goes_on_when_a_cell_fails_and_marks_it(engine):
    def fail_at_cfg_3(state):
        if state.cfg_scale == 3:
            raise RuntimeError("boom")

    engine.hooks.add("before_step", fail_at_cfg_3)
    result = run_xyz_plot(engine, req(), "CFG Scale", "2, 3, 4", include_lone_images=True)
    assert [c.error is not None for c in result.cells] == [False, True, False]
    assert len(result.errors) == 1 and "CFG Scale: 3.0" in result.errors[0] and "boom" in result.errors[0]
    grid = result.images[0]
    assert grid.width == 3 * 64 and grid.height > 64  # no row labels: no left margin
    marked = np.asarray(result.cells[1].image)
    assert marked.shape == (64, 64, 3) and (marked[..., 0] > 150).any()  # the red cross
    assert len(result.images) == 4  # grid + each cell, as with "Include Sub Images"


def test_xyz_bad_axis_values_name_the_axis(engine):
    with pytest.raises(ValidationError) as err:
        run_xyz_plot(engine, req(), "Steps", "1, lots")
    assert err.value.field == "x_values" and "Steps" in str(err.value)
    with pytest.raises(ValidationError) as err:
        run_xyz_plot(engine, req(), "Seed", "1", "Steps", "0-2")
    assert err.value.field == "y_values" and "between 1 and" in str(err.value)
    with pytest.raises(ValidationError) as err:
        run_xyz_plot(engine, req(), "Seed", "1", z_type="Prompt S/R", z_values="castle, tower")
    assert err.value.field == "z_values" and "castle" in str(err.value)
    with pytest.raises(ValidationError) as err:
        run_xyz_plot(engine, req(), "Eta", "0, 1")
    assert err.value.field == "x_type" and "doesn't support" in str(err.value)
    with pytest.raises(ValidationError) as err:
        run_xyz_plot(engine, req(), "Checkpoint name", "tiny-sd1, no-such-model")
    assert err.value.field == "x_values" and "no-such-model" in str(err.value)


def test_xyz_keeps_minus_one_seeds_only_when_asked(engine):
    fixed = run_xyz_plot(engine, req(seed=-1, steps=1), "Seed", "-1, 5")
    assert fixed.cells[0].x != -1 and fixed.cells[1].x == 5
    assert f"Fixed X Values: \"{fixed.cells[0].x}, 5\"" in fixed.infotexts[0]


def test_xyz_setting_axis_goes_to_override_settings(engine):
    result = run_xyz_plot(engine, req(steps=1), "Setting: CLIP_stop_at_last_layers", "1, 2")
    assert "Clip skip: 2" in result.cells[1].infotext and "Clip skip" not in result.cells[0].infotext
    with pytest.raises(ValidationError) as err:
        run_xyz_plot(engine, req(), "Setting: samples_format", "png, tiff")
    assert err.value.field == "x_values"


def test_grid_annotations_wrap_and_size():
    grid = Image.new("RGB", (2 * 100, 100), "gray")
    out = draw_grid_annotations(grid, 100, 100, labels(["a rather long label that wraps", "b"]), labels([""]))
    assert out.width == 200 and out.height > 100


# --------------------------------------------------------------------------- prompts from file


def test_prompts_from_file_makes_one_image_per_line_with_its_options(engine):
    text = "\n".join([
        "a red car",
        '--prompt "a blue boat" --steps 3 --cfg_scale 5',
        "",
        "--prompt green tree --negative_prompt dark --seed 7 --sampler_name k_euler_a",  # an alias
    ])
    result = run_prompts_from_file(engine, req(prompt="", negative_prompt="", steps=2), text)
    assert len(result.images) == 3 and len(result.infotexts) == 3 and not result.errors
    first, second, third = result.infotexts
    assert first.startswith("a red car\n") and "Steps: 2" in first and "Seed: 42" in first
    assert second.startswith("a blue boat\n") and "Steps: 3" in second and "CFG scale: 5.0" in second
    assert third.startswith("green tree\nNegative prompt: dark\n") and "Seed: 7" in third
    assert "Sampler: Euler a" in third


def test_prompts_from_file_line_options_and_errors(engine):
    assert parse_line('--prompt "x y" z --steps 4') == {"prompt": "x y z", "steps": "4"}
    with pytest.raises(ValidationError) as err:
        run_prompts_from_file(engine, req(), "ok\n--prompt x --steps ten")
    assert err.value.field == "prompt_txt" and "line 2" in str(err.value)
    # an unknown option: the whole line is the prompt, as A1111 does, and the result says so
    result = run_prompts_from_file(engine, req(steps=1, prompt=""), "--colour red")
    assert result.infotexts[0].startswith("--colour red\n") and "line 1" in result.errors[0]


def test_prompts_from_file_through_the_registry_with_a1111_args(engine):
    request = req(prompt="portrait", steps=1, script_name="prompts from file or textbox",
                  script_args=[True, False, "end", "oil painting\nwatercolor"])
    result = run_script(engine, request)
    assert [t.split("\n")[0] for t in result.infotexts] == ["portrait oil painting", "portrait watercolor"]
    assert "Seed: 42" in result.infotexts[0] and "Seed: 43" in result.infotexts[1]  # iterate seed every line


# --------------------------------------------------------------------------- SD upscale


def test_split_and_combine_grid_round_trip():
    image = gradient(160, 96)
    grid = split_grid(image, 64, 64, 16)
    assert [t.x for t in grid.tiles[0]] == [0, 48, 96] and [line[0].y for line in grid.tiles] == [0, 32]
    assert np.array_equal(np.asarray(combine_grid(grid)), np.asarray(image))


def test_sd_upscale_with_a1111_script_args(engine, tmp_path):
    request = req(init_images=[gradient()], denoising_strength=0.3, batch_size=4, script_name="SD upscale",
                  script_args=["", 32, 1, 2])  # [info, overlap, upscaler_index (1 = Lanczos), scale_factor]
    result = run_script(engine, request)
    assert [im.size for im in result.images] == [(128, 128)]
    assert "SD upscale overlap: 32, SD upscale upscaler: Lanczos" in result.infotexts[0]
    [saved] = result.paths
    assert saved.parent.parent.name == "img2img-images" and Image.open(saved).size == (128, 128)
    assert find_script("sd upscale", True).args == ("info", "overlap", "upscaler_index", "scale_factor")


def test_sd_upscale_refuses_txt2img_and_bad_overlap(engine):
    with pytest.raises(ValidationError) as err:
        run_script(engine, req(script_name="SD upscale", script_args=["", 32, 1, 2]))
    assert err.value.field == "script_name"  # an img2img script
    with pytest.raises(ValidationError) as err:
        run_script(engine, req(init_images=[gradient()], script_name="sd upscale", script_args=["", 64, 1, 2]))
    assert err.value.field == "overlap"


# --------------------------------------------------------------------------- loopback and registry


def test_loopback_feeds_each_result_back(engine):
    result = run_loopback(engine, req(init_images=[gradient()], denoising_strength=0.6), loops=2,
                          final_denoising_strength=0.4)
    grid, first, second = result.images
    assert grid.size == (128, 64) and first.size == second.size == (64, 64)
    assert "Denoising strength: 0.6" in result.infotexts[1] and "Seed: 42" in result.infotexts[1]
    assert "Denoising strength: 0.4" in result.infotexts[2] and "Seed: 43" in result.infotexts[2]
    assert "Final denoising strength: 0.4, Denoising curve: Linear" in result.infotexts[2]
    assert denoising_strength(1, 3, 0.2, 0.8, "Aggressive") == pytest.approx(0.2 + 0.6 * np.sin(np.pi / 4))


def test_registry_lists_scripts_per_tab():
    scripts = list_scripts()
    assert scripts["txt2img"] == ["prompts from file or textbox", "x/y/z plot"]
    assert set(scripts["img2img"]) == {"prompts from file or textbox", "x/y/z plot", "loopback", "sd upscale"}
    with pytest.raises(ValidationError) as err:
        find_script("prompt matrix", False)
    assert err.value.field == "script_name"


def test_a_script_args_check_refuses_with_the_field_and_hands_on_what_it_parsed(tmp_path):
    from modules.errors import ValidationError
    from modules.scripting import AlwaysVisible, Script, ScriptArg, ScriptClass, ScriptRunner

    def parse(value):
        if not isinstance(value, str) or not value.isdigit():
            raise ValueError("must be a string of digits")
        return int(value)

    class Counter(Script):
        api_args = [ScriptArg(label="Count", value="1", name="count", check=parse)]

        def title(self):
            return "Counter"

        def show(self, is_img2img):
            return AlwaysVisible

    runner = ScriptRunner([ScriptClass(Counter, tmp_path / "counter.py")], is_img2img=False)
    args = runner.script_args(req(alwayson_scripts={"counter": {"args": ["42"]}}))
    assert args[1:] == [42]  # parsed once, at the request: the script gets the int
    assert runner.script_args(req(alwayson_scripts={"counter": {"args": {"count": "7"}}}))[1:] == [7]
    with pytest.raises(ValidationError) as refused:
        runner.script_args(req(alwayson_scripts={"counter": {"args": ["x"]}}))
    assert refused.value.field == "alwayson_scripts.counter.args.0" and "digits" in refused.value.reason
