"""The engine end to end: queue → model → images on disk with infotext that reproduces them."""
import threading

import numpy as np
import pytest
from PIL import Image

from modules.engine import Engine
from modules.infotext import read_image_infotext, request_from_infotext
from modules.jobs import JobState
from modules.paths import Paths
from modules.request import GenerationRequest
from modules.settings import Settings


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    paths = Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "outputs"))
    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    eng = Engine(paths, policy, settings)
    yield eng
    eng.shutdown()


def req(**changes) -> GenerationRequest:
    base = dict(prompt="a lighthouse, (stormy sea:1.2)", negative_prompt="blurry", seed=42, steps=3, width=64,
                height=64, sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=6.5)
    base.update(changes)
    return GenerationRequest(**base)


def test_job_saves_png_with_infotext_and_pasting_it_reproduces_the_image(engine, tmp_path):
    job = engine.generate(req(), timeout=120)
    assert job.state == JobState.done, job.error
    output = job.result
    [path] = output.paths
    assert path.parent.parent.name == "txt2img-images" and path.name.endswith("-42.png")
    saved = Image.open(path)
    text, _ = read_image_infotext(saved)
    assert text == output.infotexts[0]
    assert "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 64x64" in text
    assert "Model: tiny-sd1, " in text

    again = request_from_infotext(text)
    job2 = engine.generate(again, timeout=120)
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(job2.result.images[0]))


def test_batch_job_saves_each_image_and_a_grid(engine, tmp_path):
    job = engine.generate(req(batch_size=2, n_iter=2), timeout=120)
    assert job.state == JobState.done, job.error
    assert [p.name.split("-")[1] for p in job.result.paths] == ["42.png", "43.png", "44.png", "45.png"]
    assert job.result.grid.size == (128, 128)
    grids = list((tmp_path / "outputs" / "txt2img-grids").rglob("grid-*.png"))
    assert len(grids) == 1


def test_failed_job_reports_and_the_worker_keeps_serving(engine):
    bad = engine.queue.submit(req(override_settings={"sd_model_checkpoint": "no-such-model"}))
    good = engine.submit(req())
    assert engine.queue.wait(bad.id, 120).state == JobState.failed
    assert "no-such-model" in bad.error
    assert engine.queue.wait(good.id, 120).state == JobState.done


def test_interrupt_stops_within_a_step_and_keeps_finished_images(engine):
    started = threading.Event()

    def on_step(state):
        started.set()

    engine.hooks.add("after_step", on_step)
    job = engine.submit(req(steps=50, n_iter=3))
    assert started.wait(60)
    engine.queue.interrupt(job.id)
    engine.queue.wait(job.id, 60)
    assert job.state == JobState.interrupted
    assert job.step < 150


def test_skip_moves_to_the_next_batch(engine):
    seen = []

    def on_step(state):
        seen.append(state.step)
        if len(seen) == 2:
            engine.queue.skip()

    engine.hooks.add("after_step", on_step)
    job = engine.generate(req(steps=6, n_iter=2), timeout=120)
    assert job.state == JobState.done
    assert len(job.result.images) == 1  # the first batch was skipped, the second finished
    assert job.result.result.seeds[1] == 43


def test_a_stale_checkpoint_in_settings_falls_back_instead_of_failing(engine):
    engine.settings.set("sd_model_checkpoint", "deleted-long-ago.safetensors")
    job = engine.generate(req(), timeout=120)
    assert job.state == JobState.done, job.error


def test_preview_interval_follows_the_setting_whoever_changes_it(engine):
    engine.settings.set("show_progress_every_n_steps", 3)
    assert engine.queue.preview_every == 3
