"""The generation core on tiny real models: reproducibility, batches, samplers, img2img, inpaint, hires."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules import samplers
from modules.errors import ValidationError
from modules.model_loading import load_checkpoint
from modules.processing import generate
from modules.request import GenerationRequest


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a red fox in the snow", negative_prompt="blurry", seed=1234, steps=4, width=64, height=64,
                sampler_name="Euler", cfg_scale=7.0)
    base.update(changes)
    return GenerationRequest(**base)


def test_same_request_gives_same_pixels(sd1_model):
    first = generate(request(), sd1_model).images[0]
    second = generate(request(), sd1_model).images[0]
    assert first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(second))


def test_different_seeds_give_different_images(sd1_model):
    a = generate(request(seed=1), sd1_model).images[0]
    b = generate(request(seed=2), sd1_model).images[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_image_of_a_batch_equals_its_seed_alone(sd1_model, sampler):
    batch = generate(request(batch_size=3, sampler_name=sampler), sd1_model)
    assert batch.seeds == [1234, 1235, 1236]
    alone = generate(request(seed=1236, sampler_name=sampler), sd1_model).images[0]
    assert np.abs(pixels(batch.images[2]) - pixels(alone)).max() <= 2


def test_batch_count_continues_seeds(sd1_model):
    result = generate(request(n_iter=2, batch_size=2), sd1_model)
    assert result.seeds == [1234, 1235, 1236, 1237]
    assert len(result.images) == 4


@pytest.mark.parametrize("name", [s.name for s in samplers.SAMPLERS])
def test_every_sampler_makes_an_image(sd1_model, name):
    result = generate(request(sampler_name=name, steps=3), sd1_model)
    array = pixels(result.images[0])
    assert array.shape == (64, 64, 3)
    assert array.std() > 0  # not a blank image


def test_unknown_sampler_is_rejected_with_the_field_named(sd1_model):
    with pytest.raises(ValidationError) as err:
        generate(request(sampler_name="Euler z"), sd1_model)
    assert err.value.field == "sampler_name"
    assert "Euler a" in str(err.value)


@pytest.mark.parametrize("changes, field", [
    ({"width": 65}, "width"), ({"height": 16}, "height"), ({"steps": 0}, "steps"), ({"cfg_scale": float("nan")}, "cfg_scale"),
])
def test_bad_sizes_and_steps_are_rejected(sd1_model, changes, field):
    with pytest.raises(ValidationError) as err:
        generate(request(**changes), sd1_model)
    assert err.value.field == field


def test_variation_seed_strength_zero_is_the_base_image(sd1_model):
    base = generate(request(), sd1_model).images[0]
    zero = generate(request(subseed=99, subseed_strength=0.0), sd1_model).images[0]
    varied = generate(request(subseed=99, subseed_strength=0.5), sd1_model).images[0]
    assert np.array_equal(pixels(base), pixels(zero))
    assert np.abs(pixels(base) - pixels(varied)).mean() > 0.5


def test_resize_seed_keeps_composition_at_a_new_size(sd1_model):
    small = generate(request(width=64, height=64), sd1_model).images[0]
    wide = generate(request(width=96, height=64, seed_resize_from_w=64, seed_resize_from_h=64), sd1_model).images[0]
    plain_wide = generate(request(width=96, height=64), sd1_model).images[0]
    centre = pixels(wide)[:, 16:80]
    # The centre of the resized-seed image is closer to the small image than a plain wide one is.
    assert np.abs(centre - pixels(small)).mean() < np.abs(pixels(plain_wide)[:, 16:80] - pixels(small)).mean()


def test_clip_skip_changes_the_image(sd1_model):
    one = generate(request(), sd1_model).images[0]
    two = generate(request(override_settings={"CLIP_stop_at_last_layers": 2}), sd1_model).images[0]
    assert not np.array_equal(pixels(one), pixels(two))


def test_img2img_strength_follows_the_init_image(sd1_model):
    # A random-weight VAE can't reproduce the image, so compare with its own round trip (strength 0).
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    target = pixels(generate(request(init_images=[init], denoising_strength=0.0, steps=10), sd1_model).images[0])
    low = generate(request(init_images=[init], denoising_strength=0.2, steps=10), sd1_model).images[0]
    high = generate(request(init_images=[init], denoising_strength=0.9, steps=10), sd1_model).images[0]
    assert np.abs(pixels(low) - target).mean() < np.abs(pixels(high) - target).mean()


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_img2img_resize_modes_give_requested_size(sd1_model, mode):
    init = Image.new("RGB", (100, 60), (10, 120, 30))
    result = generate(request(init_images=[init], resize_mode=mode, width=64, height=96, steps=2), sd1_model)
    assert result.images[0].size == (64, 96)


def _stroke_mask(size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((20, 20, 44, 44), fill=255)
    return mask


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpaint_leaves_unmasked_pixels_intact(sd1_model, fill):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = generate(request(init_images=[init], mask=_stroke_mask(), mask_blur=0, inpainting_fill=fill,
                              denoising_strength=1.0, steps=4), sd1_model).images[0]
    out, src = pixels(result), pixels(init)
    outside = np.ones((64, 64), bool)
    outside[16:49, 16:49] = False
    assert np.abs(out[outside] - src[outside]).max() <= 1
    assert np.abs(out[24:40, 24:40] - src[24:40, 24:40]).mean() > 5  # the masked area changed


def test_inpaint_only_masked_keeps_the_source_size(sd1_model):
    init = Image.new("RGB", (128, 96), (40, 90, 160))
    mask = Image.new("L", (128, 96), 0)
    ImageDraw.Draw(mask).rectangle((80, 40, 100, 60), fill=255)
    result = generate(request(init_images=[init], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8,
                              mask_blur=0, steps=3), sd1_model).images[0]
    assert result.size == (128, 96)
    assert np.abs(pixels(result)[:30] - pixels(init)[:30]).max() <= 1


def test_mask_of_another_size_is_resized(sd1_model):
    init = Image.new("RGB", (64, 64), (10, 10, 10))
    result = generate(request(init_images=[init], mask=_stroke_mask((32, 32)), steps=2), sd1_model)
    assert result.images[0].size == (64, 64)


def test_inpainting_model_with_nine_channels(tiny_ckpt, policy):
    model = load_checkpoint(tiny_ckpt["sd1-inpainting"], policy)
    assert model.unet.config.in_channels == 9 and model.family.inpainting
    init = Image.new("RGB", (64, 64), (120, 60, 200))
    result = generate(request(init_images=[init], mask=_stroke_mask(), mask_blur=0, steps=3), model).images[0]
    outside = np.ones((64, 64), bool)
    outside[16:49, 16:49] = False
    assert np.abs(pixels(result)[outside] - pixels(init)[outside]).max() <= 1


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_fix_outputs_the_upscaled_size(sd1_model, upscaler):
    result = generate(request(enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, denoising_strength=0.5,
                              hr_second_pass_steps=2), sd1_model)
    assert result.images[0].size == (96, 96)


def test_hires_resize_to_wins_over_scale(sd1_model):
    result = generate(request(enable_hr=True, hr_resize_x=128, hr_resize_y=96, hr_upscaler="Nearest",
                              hr_second_pass_steps=1), sd1_model)
    assert result.images[0].size == (128, 96)


def test_unknown_hires_upscaler_is_rejected(sd1_model):
    with pytest.raises(ValidationError) as err:
        generate(request(enable_hr=True, hr_upscaler="Nope"), sd1_model)
    assert err.value.field == "hr_upscaler"


@pytest.mark.parametrize("family", ["sd2-v", "sdxl"])
def test_other_families_generate(tiny_ckpt, policy, family):
    model = load_checkpoint(tiny_ckpt[family], policy)
    first = generate(request(steps=3), model).images[0]
    again = generate(request(steps=3), model).images[0]
    assert first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))


def test_long_prompt_beyond_75_tokens_changes_the_image(sd1_model):
    short = "a cat"
    long = short + ", " + ", ".join(f"detail{i}" for i in range(60))
    a = generate(request(prompt=short), sd1_model).images[0]
    b = generate(request(prompt=long), sd1_model).images[0]
    assert not np.array_equal(pixels(a), pixels(b))


def test_inpainting_model_also_does_txt2img_img2img_and_hires(tiny_ckpt, policy):
    model = load_checkpoint(tiny_ckpt["sd1-inpainting"], policy)
    assert generate(request(steps=2), model).images[0].size == (64, 64)
    init = Image.new("RGB", (64, 64), (120, 60, 200))
    assert generate(request(init_images=[init], steps=2), model).images[0].size == (64, 64)
    hires = generate(request(steps=2, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1), model)
    assert hires.images[0].size == (96, 96)
