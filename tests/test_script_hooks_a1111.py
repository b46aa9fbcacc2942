"""A1111's later script hooks, through the real engine with an A1111-style extension (tests/extensions_a1111/
hook-probe): process_before_every_sampling before each sampling pass, before_hr before the hires pass only, and
postprocess_batch_list whose list of images decides what is saved."""
import numpy as np
import pytest
from PIL import Image

from modules.infotext import parse_infotext, read_image_infotext
from modules.jobs import JobState
from tests.extension_helpers import A1111_EXTENSIONS, close, load_from, make_engine, request


@pytest.fixture(scope="module")
def engine(tiny_dir, policy, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hooks")
    eng = make_engine(tiny_dir, policy, tmp_path)
    load_from(eng, tmp_path, A1111_EXTENSIONS / "hook-probe")
    yield eng
    close(eng)


def probe(engine, img2img=False):
    script = engine.scripts.runner(img2img).find("Hook probe", alwayson=True)
    script.calls.clear()
    return script


def run(engine, mode, **changes):
    job = engine.generate(request(alwayson_scripts={"Hook probe": {"args": [mode]}}, **changes), timeout=300)
    assert job.state == JobState.done, job.error
    assert not job.result.result.notes, job.result.result.notes  # no hook failed
    return job.result


HIRES = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.5)


def test_before_hr_and_every_sampling_pass_are_called_in_a1111s_order(engine):
    script = probe(engine)
    run(engine, "record", **HIRES)
    assert script.calls == [("sampling", False, (1, 4, 32, 32), (1, 4, 32, 32), True),
                            ("before_hr", True),
                            ("sampling", True, (1, 4, 64, 64), (1, 4, 64, 64), False),
                            ("step", "hires"), ("step", "hires"),  # int(0.5 × 2) + 1 hires steps
                            ("batch_list", 0, 1)]

    script.calls.clear()
    run(engine, "record", n_iter=2)  # no hires: before_hr is never called; one pass per batch
    assert script.calls == [("sampling", False, (1, 4, 32, 32), (1, 4, 32, 32), True), ("batch_list", 0, 1),
                            ("sampling", False, (1, 4, 32, 32), (1, 4, 32, 32), True), ("batch_list", 1, 1)]


def test_img2img_sampling_starts_from_the_init_latents(engine):
    script = probe(engine, img2img=True)
    run(engine, "record", init_images=[Image.new("RGB", (64, 64), "gray")], denoising_strength=0.5)
    assert script.calls == [("sampling", False, (1, 4, 32, 32), (1, 4, 32, 32), False), ("batch_list", 0, 1)]


def test_changing_x_in_process_before_every_sampling_changes_the_image(engine):
    probe(engine)
    plain = np.asarray(run(engine, "off").images[0], dtype=np.int16)
    again = np.asarray(run(engine, "record").images[0], dtype=np.int16)
    quiet = np.asarray(run(engine, "quiet noise").images[0], dtype=np.int16)
    assert np.array_equal(plain, again)
    assert np.abs(quiet - plain).mean() > 1.0


def test_postprocess_batch_list_dropping_an_image_saves_one_less(engine):
    out = run(engine, "drop first", batch_size=2)
    assert len(out.images) == 1 and len(out.paths) == 1
    text = read_image_infotext(Image.open(out.paths[0]))[0]
    assert parse_infotext(text)["Seed"] == "8"  # the second image's seed, as the script set p.seeds


def test_postprocess_batch_list_adding_an_image_saves_it_with_its_own_infotext(engine):
    plain = run(engine, "off", batch_size=2)
    out = run(engine, "add inverted", batch_size=2)
    assert len(out.images) == 3 and len(out.paths) == 3
    first, added = (np.asarray(Image.open(path), dtype=np.int16) for path in (out.paths[0], out.paths[2]))
    assert np.array_equal(first, np.asarray(plain.images[0], dtype=np.int16))
    assert np.array_equal(added, 255 - first)
    text = read_image_infotext(Image.open(out.paths[2]))[0]
    assert text.startswith("a lighthouse, inverted\n") and parse_infotext(text)["Seed"] == "7"
