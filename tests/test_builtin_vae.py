"""VAE files in models/VAE: chosen per job or in settings, named and hashed in the infotext, pasted back, and shown
as cards by the built-in `vae` extension."""
import hashlib

import numpy as np
import pytest
from safetensors.torch import save_file

from modules import extra_network_cards
from modules.infotext import request_from_infotext
from tests.builtin_helpers import close, make_engine, run
from tests.tiny_models import _vae_to_ldm, build_tiny_components


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, "vae")
    yield eng
    close(eng)


def write_vae(path, seed=11):
    vae = build_tiny_components("sd1", seed=seed)["vae"]
    save_file({k: v.contiguous() for k, v in _vae_to_ldm(vae.state_dict(), vae.config).items()}, str(path))
    return path


def test_vae_per_job_and_in_settings_with_name_and_hash_in_the_infotext(engine):
    path = write_vae(engine.paths.vae_dir / "crisp.vae.safetensors")
    engine.models.vaes.refresh()
    base, base_text, _ = run(engine)
    assert "VAE" not in base_text  # the checkpoint's own VAE: A1111 writes nothing
    swapped, text, _ = run(engine, override_settings={"sd_vae": "crisp.vae.safetensors"})
    assert np.abs(swapped - base).mean() > 1.0
    assert f"VAE hash: {hashlib.sha256(path.read_bytes()).hexdigest()[:10]}, VAE: crisp.vae.safetensors" in text
    again, _, _ = run(engine)
    assert np.array_equal(again, base)  # back to the checkpoint's VAE exactly
    pasted = request_from_infotext(text)
    assert pasted.override_settings["sd_vae"] == "crisp.vae.safetensors"
    job = engine.generate(pasted, timeout=120)
    assert np.array_equal(np.asarray(job.result.images[0]).astype(np.int16), swapped)
    engine.settings.set("sd_vae", "crisp.vae.safetensors")
    from_settings, _, _ = run(engine)
    assert np.array_equal(from_settings, swapped)


def test_vae_cards(engine):
    write_vae(engine.paths.vae_dir / "crisp.vae.safetensors")
    (engine.paths.vae_dir / "crisp.vae.png").write_bytes(b"png")
    [card] = extra_network_cards.extra_network_cards()["vae"]
    assert card.name == "crisp.vae" and card.tag == "" and card.metadata == {"sd_vae": "crisp.vae.safetensors"}
    assert card.preview.name == "crisp.vae.png"
