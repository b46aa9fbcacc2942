"""The built-in textual-inversion extension (extensions-builtin/textual_inversion) through the real engine, with
embedding files written here in A1111's .pt, diffusers' .bin and SDXL's clip_l/clip_g safetensors formats."""
import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules import embedding_hooks, extension_lists, extra_network_cards
from modules.text_encoding import EOS, PromptEncoder
from tests.builtin_helpers import close, make_engine, run


def a1111_pt(path, width=32, count=2, seed=3, step=120):
    vec = torch.randn(count, width, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": path.stem, "step": step,
                "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd1"}, path)
    return path


def shorthash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class NotATensor:
    pass


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, "textual_inversion")
    yield eng
    close(eng)


def test_embedding_in_the_prompt_changes_the_image_and_removing_the_file_restores_it(engine):
    prompt = "a lighthouse, shinystyle"
    as_text, _, _ = run(engine, prompt=prompt)
    path = a1111_pt(engine.paths.embeddings_dir / "shinystyle.pt")
    with_embedding, text, notes = run(engine, prompt=prompt)
    assert np.abs(with_embedding - as_text).mean() > 1.0
    assert f'TI hashes: "shinystyle: {shorthash(path)}"' in text
    path.unlink()
    again, text_again, _ = run(engine, prompt=prompt)
    assert np.array_equal(again, as_text) and "TI hashes" not in text_again


def test_diffusers_bin_and_negative_prompt_embeddings_are_listed_in_the_infotext(engine):
    folder = engine.paths.embeddings_dir
    torch.save({"<cat-toy>": torch.randn(32, generator=torch.Generator().manual_seed(5))}, folder / "cattoy.bin")
    (folder / "negatives").mkdir()
    bad = a1111_pt(folder / "negatives" / "badhands.pt", count=3)
    base, _, _ = run(engine, prompt="a cattoy lighthouse", negative_prompt="badhands")
    _, text, _ = run(engine, prompt="a cattoy lighthouse", negative_prompt="blurry, badhands")
    assert f'TI hashes: "cattoy: {shorthash(folder / "cattoy.bin")}, badhands: {shorthash(bad)}"' in text
    engine.settings.set("textual_inversion_add_hashes_to_infotext", False)
    unhashed, text, _ = run(engine, prompt="a cattoy lighthouse", negative_prompt="badhands")
    assert "TI hashes" not in text and np.array_equal(unhashed, base)


def test_wrong_width_is_skipped_and_reported_and_unsafe_pickles_refused(engine):
    folder = engine.paths.embeddings_dir
    a1111_pt(folder / "fits.pt")
    a1111_pt(folder / "toowide.pt", width=48)
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "trainer": NotATensor()}, folder / "sneaky.pt")
    legacy = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, 32))})  # early TI files
    torch.save({"string_to_param": legacy, "name": "legacy", "step": 5}, folder / "legacy.pt")
    as_text, _, _ = run(engine, prompt="a toowide lighthouse")
    listing = extension_lists.get_list("embeddings")
    assert listing == {
        "loaded": {"fits": {"step": 120, "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd1", "shape": 32,
                            "vectors": 2},
                   "legacy": {"step": 5, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32,
                              "vectors": 1}},
        "skipped": {"toowide": {"step": 120, "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd1",
                                "shape": 48, "vectors": 2}}}
    _, text, notes = run(engine, prompt="a toowide lighthouse")
    assert "TI hashes" not in text and not notes
    cards = {card.name: card for card in extra_network_cards.extra_network_cards()["textual_inversion"]}
    assert cards["fits"].tag == "fits" and cards["fits"].metadata["fits_model"] is True
    assert cards["toowide"].metadata["fits_model"] is False and "sneaky" not in cards


def test_an_embedding_is_never_split_across_chunks(engine):
    a1111_pt(engine.paths.embeddings_dir / "threevec.pt", count=3)
    run(engine)  # loads the model
    model = engine.models.current
    encoder = PromptEncoder(model, embedding_hooks.lookup_for(model))
    chunks = encoder.chunks_for("cat " * 74 + "threevec")
    assert len(chunks) == 2
    assert chunks[0].tokens[74] == EOS and not chunks[0].fixes  # the chunk is padded rather than split
    [(offset, embedding)] = chunks[1].fixes
    assert offset == 0 and embedding.name == "threevec" and embedding.vector_count == 3


def test_sdxl_embedding_pair(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, "textual_inversion", checkpoint="tiny-sdxl.safetensors")
    try:
        g = torch.Generator().manual_seed(9)
        path = eng.paths.embeddings_dir / "xlstyle.safetensors"
        save_file({"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 32, generator=g)}, str(path))
        a1111_pt(eng.paths.embeddings_dir / "sd1only.pt")
        as_text, _, _ = run(eng, prompt="a lighthouse, xlstyle")
        (eng.paths.embeddings_dir / "xlstyle.safetensors").rename(eng.paths.embeddings_dir / "off.txt")
        without, _, _ = run(eng, prompt="a lighthouse, xlstyle")
        (eng.paths.embeddings_dir / "off.txt").rename(path)
        again, text, _ = run(eng, prompt="a lighthouse, xlstyle")
        assert np.array_equal(as_text, again) and np.abs(as_text - without).mean() > 1.0
        assert f'TI hashes: "xlstyle: {shorthash(path)}"' in text
        listing = extension_lists.get_list("embeddings")
        assert listing["loaded"]["xlstyle"]["shape"] == 64 and listing["loaded"]["xlstyle"]["vectors"] == 2
        assert list(listing["skipped"]) == ["sd1only"]
    finally:
        close(eng)
