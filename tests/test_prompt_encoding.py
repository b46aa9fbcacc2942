"""Prompts → conditioning on tiny real models: chunks, emphasis numbers, schedules in the loop, AND, caching,
extra networks, wildcards. Generations are 64 px with few steps to keep this quick."""
import numpy as np
import pytest
import torch

from modules.extra_networks import ExtraNetworkRegistry
from modules.model_loading import load_checkpoint
from modules.processing import generate
from modules.prompt_conditioning import BatchPrompts, PromptEncoding, conditioning_cache
from modules.prompts import PromptEnvironment, PromptOptions, prepare_prompts
from modules.request import GenerationRequest
from modules.sampling import Hooks
from modules.text_encoding import BOS, EOS, Embedding, EmbeddingTable, EncodeSettings, PromptEncoder
from modules.wildcards import Wildcards


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a red fox in the snow", negative_prompt="blurry", seed=1234, steps=4, width=64, height=64,
                sampler_name="Euler", cfg_scale=7.0)
    base.update(changes)
    return GenerationRequest(**base)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def sdxl_model(tiny_ckpt, policy):
    return load_checkpoint(tiny_ckpt["sdxl"], policy)


@pytest.fixture()
def encoder(sd1_model):
    return PromptEncoder(sd1_model)


@pytest.fixture(scope="module")
def biased_model(sd1_model):
    """sd1_model whose final layer norm has a bias: a freshly initialised norm makes every output vector's
    mean exactly 0, and "Original" emphasis divides by that mean."""
    import copy
    import dataclasses

    text_encoder = copy.deepcopy(sd1_model.text_encoders[0])
    with torch.no_grad():
        text_encoder.final_layer_norm.bias.copy_(torch.linspace(-0.2, 0.6, 32))
    return dataclasses.replace(sd1_model, text_encoders=[text_encoder])


def words(n: int, stem: str = "word") -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


# ------------------------------------------------------------------------------------------ chunks

def test_break_gives_one_chunk_per_section(encoder):
    assert len(encoder.chunks_for("a cat BREAK a dog BREAK a hat")) == 3
    assert encoder.encode("a cat BREAK a dog BREAK a hat").context.shape == (1, 3 * 77, 32)
    assert len(encoder.chunks_for("a cat BREAK")) == 1  # nothing after the last BREAK: no empty chunk
    assert len(encoder.chunks_for("a cat BREAK", EncodeSettings(emphasis="None"))) == 1  # None: BREAK is a word


def test_a_300_token_prompt_has_no_limit(sd1_model, encoder):
    prompt = ", ".join(f"detail{i}" for i in range(100))  # 100 × (2 or 3 tokens + comma)
    count, limit = encoder.count_tokens(prompt)
    assert count >= 300 and limit == -(-count // 75) * 75
    cond = encoder.encode(prompt)
    assert cond.context.shape[1] == 77 * len(encoder.chunks_for(prompt)) >= 77 * 4
    image = generate(request(prompt=prompt, steps=1, cfg_scale=1.0), sd1_model).images[0]
    assert pixels(image).std() > 0


def test_comma_backtrack_moves_the_words_after_the_last_comma(encoder):
    cat, dog = encoder.tokenize(["cat", "dog"])
    prompt = "cat " * 70 + ", " + "dog " * 10  # one token each
    first, second = encoder.chunks_for(prompt)
    assert first.tokens == cat * 70 + [encoder.comma_token] + [EOS] * 4
    assert second.tokens[:10] == dog * 10
    # with backtracking off, the chunk is simply cut at 75 tokens
    first, second = encoder.chunks_for(prompt, EncodeSettings(comma_padding_backtrack=0))
    assert EOS not in first.tokens


def test_token_counter_counts_like_a1111(encoder):
    assert encoder.count_tokens("a cat") == (2, 75)
    assert encoder.count_tokens("") == (0, 75)
    assert encoder.count_tokens("a BREAK b") == (76, 150)  # a full chunk counts 75
    assert encoder.count_tokens("cat " * 80) == (80, 150)
    # every step of an edit and every AND part is counted; the largest is shown; tags and comments aren't
    long = words(40, "y")
    assert encoder.count_tokens(f"a [cat:{long}:5] AND dog <lora:x:1>\n# {words(90)}")[0] == \
        encoder.count_tokens(f"a {long}")[0]
    assert encoder.count_tokens("(a:1.2) [b]") == (2, 75)


def test_embeddings_are_never_split_across_chunks(sd1_model):
    vectors = torch.randn(6, 32)
    table = EmbeddingTable(lambda text: sd1_model.tokenizer(text, add_special_tokens=False).input_ids,
                           [Embedding("shinystyle", [vectors])])
    encoder = PromptEncoder(sd1_model, table)
    first, second = encoder.chunks_for("cat " * 72 + "shinystyle")
    assert len(first.tokens) == 75 and not first.fixes
    assert second.fixes[0][0] == 0 and second.tokens[:6] == [0] * 6
    plain = encoder.encode("shinystyle").context
    other = PromptEncoder(sd1_model, EmbeddingTable(table._tokenize, [Embedding("shinystyle", [vectors * 2])]))
    assert not torch.allclose(plain, other.encode("shinystyle").context)
    assert not torch.allclose(plain, PromptEncoder(sd1_model).encode("shinystyle").context)
    # new vectors under the same name are not served from the cache
    encoding = PromptEncoding(encoder, EncodeSettings(), conditioning_cache(sd1_model))
    before = encoding.schedule("shinystyle", 10, None, False).entries[0][1].context
    table.add(Embedding("shinystyle", [vectors * 3]))
    after = encoding.schedule("shinystyle", 10, None, False).entries[0][1].context
    assert not torch.allclose(before, after)


# ------------------------------------------------------------------------------------------ emphasis numbers

def direct_hidden(model, pieces, encoder_index=0, pad=EOS, layer=None):
    """Token ids built by hand, run through the text encoder by hand (no project code)."""
    ids, weights = [BOS], [1.0]
    for text, weight in pieces:
        tokens = model.tokenizer(text, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    ids += [EOS] * (77 - len(ids))
    weights += [1.0] * (77 - len(weights))
    if pad != EOS:
        first = ids.index(EOS)
        ids = ids[:first + 1] + [pad] * (76 - first)
    with torch.no_grad():
        out = model.text_encoders[encoder_index](torch.tensor([ids]), output_hidden_states=True)
    hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
    return hidden, torch.tensor(weights).reshape(1, 77, 1), out


@pytest.mark.parametrize("mode", ["Original", "No norm", "Ignore"])
def test_weighted_encoding_equals_a_direct_computation(biased_model, mode):
    encoder = PromptEncoder(biased_model)
    prompt = "a (red:1.5) fox in [the] ((snow))"
    pieces = [("a ", 1.0), ("red", 1.5), (" fox in ", 1.0), ("the", 1 / 1.1), (" ", 1.0), ("snow", 1.21)]
    z, w, _ = direct_hidden(biased_model, pieces)
    assert abs(z.mean()) > 0.1
    expected = {"Original": z * w * (z.mean() / (z * w).mean()), "No norm": z * w, "Ignore": z}[mode]
    got = encoder.encode(prompt, settings=EncodeSettings(emphasis=mode)).context
    assert torch.allclose(got, expected, atol=1e-6)


def test_emphasis_none_reads_brackets_as_words(sd1_model, encoder):
    z, _, _ = direct_hidden(sd1_model, [("a (red:1.5) fox", 1.0)])
    assert torch.allclose(encoder.encode("a (red:1.5) fox", settings=EncodeSettings(emphasis="None")).context, z)


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(sd1_model, encoder):
    _, _, out = direct_hidden(sd1_model, [("a fox", 1.0)])
    expected = sd1_model.text_encoders[0].final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(encoder.encode("a fox", clip_skip=2).context, expected, atol=1e-6)


def test_texts_encoded_together_share_one_mean(biased_model):
    """A1111 encodes an edited prompt's texts in one batch; "Original" restores the batch's mean."""
    encoder = PromptEncoder(biased_model)
    texts = ["a (red:1.6) fox", "a blue fox", "a blue fox"]
    z1, w1, _ = direct_hidden(biased_model, [("a ", 1.0), ("red", 1.6), (" fox", 1.0)])
    z2, _, _ = direct_hidden(biased_model, [("a blue fox", 1.0)])
    z = torch.cat([z1, z2, z2])
    scaled = z * torch.cat([w1, torch.ones_like(w1), torch.ones_like(w1)])
    expected = scaled * (z.mean() / scaled.mean())
    got = encoder.encode_batch(texts)
    assert torch.allclose(torch.cat([c.context for c in got]), expected, atol=1e-6)
    # shorter texts of the batch get empty chunks, so all come out the same length
    long, short = encoder.encode_batch(["cat " * 80, "x"])
    assert long.context.shape == short.context.shape == (1, 154, 32)


def test_sdxl_weights_each_encoder_and_pools_the_first_chunk(sdxl_model):
    encoder = PromptEncoder(sdxl_model)
    pieces = [("a ", 1.0), ("red", 1.4), (" fox", 1.0)]
    zl, w, _ = direct_hidden(sdxl_model, pieces, 0, layer=-2)
    zg, _, out_g = direct_hidden(sdxl_model, pieces, 1, pad=0, layer=-2)
    got = encoder.encode("a (red:1.4) fox")
    for z, part in ((zl, got.context[..., :32]), (zg, got.context[..., 32:])):  # each encoder keeps its own mean
        assert torch.allclose(part, z * w * (z.mean() / (z * w).mean()), atol=1e-6)
    assert torch.allclose(got.pooled, out_g.text_embeds, atol=1e-6)
    two_chunks = encoder.encode("a (red:1.4) fox BREAK " + words(20))
    assert two_chunks.context.shape[1] == 154
    assert torch.allclose(two_chunks.pooled, out_g.text_embeds, atol=1e-6)


def test_sdxl_empty_negative_prompt_is_zeros(sdxl_model):
    encoder = PromptEncoder(sdxl_model)
    [zero] = encoder.encode_batch([""], negative=True)
    assert zero.context.shape == (1, 77, 64) and not zero.context.any() and not zero.pooled.any()
    assert encoder.encode_batch([""])[0].context.any()  # an empty positive prompt is encoded normally


# ------------------------------------------------------------------------------------------ in the loop

def record_conds(hooks: Hooks) -> list:
    seen = []
    hooks.add("conditioning", lambda s: seen.append((s.pass_name, s.step, s.cond.context.clone(),
                                                     s.uncond.context.clone())))
    return seen


def test_prompt_editing_switches_at_the_step_it_names(sd1_model, encoder):
    hooks = Hooks()
    seen = record_conds(hooks)
    generate(request(prompt="a [cat:dog:1] in the snow", steps=4, cfg_scale=1.0), sd1_model, hooks=hooks)
    cat, dog = (c.context for c in encoder.encode_batch(["a cat in the snow", "a dog in the snow"]))
    assert [step for _, step, _, _ in seen] == [0, 1, 2, 3]
    for _, step, cond, _ in seen:  # A1111's counter starts at 0 and uses "cat" while step <= 1
        assert torch.allclose(cond, cat if step <= 1 else dog)


def test_alternation_changes_every_step(sd1_model, encoder):
    hooks = Hooks()
    seen = record_conds(hooks)
    generate(request(prompt="a [cat|dog]", steps=5, cfg_scale=1.0, width=64, height=64), sd1_model, hooks=hooks)
    cat, dog = (c.context for c in encoder.encode_batch(["a cat", "a dog", "a cat", "a dog", "a cat"])[:2])
    expected = [cat, cat, dog, cat, dog]  # step s uses the schedule entry for step s (1-based) ≥ s
    assert all(torch.allclose(cond, e) for (_, _, cond, _), e in zip(seen, expected))


def test_hires_pass_schedules_over_its_own_steps(sd1_model):
    hooks = Hooks()
    seen = record_conds(hooks)
    generate(request(prompt="[cat:dog:1.5]", steps=2, cfg_scale=1.0, enable_hr=True, hr_scale=1.0,
                     hr_upscaler="Latent", hr_second_pass_steps=4, denoising_strength=1.0), sd1_model, hooks=hooks)
    first = [c for p, _, c, _ in seen if p == "first"]
    hires = [c for p, _, c, _ in seen if p == "hires"]
    assert len(first) == 2 and len(hires) == 4
    assert all(torch.equal(c, first[0]) for c in first)  # 1.5 is past the first pass: "cat" throughout
    assert all(torch.equal(c, first[0]) for c in hires[:3]) and not torch.equal(hires[3], first[0])


def test_img2img_and_inpaint_schedule_over_the_full_step_count(sd1_model):
    from PIL import Image

    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for extra in ({}, {"mask": mask}):
        hooks = Hooks()
        seen = record_conds(hooks)
        generate(request(prompt="[cat:dog:0.5] [x|y]", negative_prompt="[ugly:2]", steps=8, denoising_strength=0.5,
                         cfg_scale=1.0, init_images=[init], **extra), sd1_model, hooks=hooks)
        assert len(seen) == 5  # A1111's int(8 × 0.5) + 1 steps, counted from 0: "cat" throughout (step <= 4)
        conds = [c for _, _, c, _ in seen]  # [x|y] over 8 steps: x, x, y, x, y
        assert torch.equal(conds[0], conds[1]) and torch.equal(conds[0], conds[3])
        assert torch.equal(conds[2], conds[4]) and not torch.equal(conds[0], conds[2])
        unconds = [u for _, _, _, u in seen]  # "" while step <= 2, then "ugly"
        assert torch.equal(unconds[2], unconds[0]) and not torch.equal(unconds[3], unconds[0])


def test_and_changes_the_image_and_weight_zero_parts_do_not(sd1_model):
    base = generate(request(prompt="a red fox", steps=2), sd1_model).images[0]
    both = generate(request(prompt="a red fox AND a blue house :0.7", steps=2), sd1_model).images[0]
    zero = generate(request(prompt="a red fox AND a blue house :0", steps=2), sd1_model).images[0]
    assert np.abs(pixels(base) - pixels(both)).mean() > 0.5
    assert np.array_equal(pixels(base), pixels(zero))


def test_and_passes_weighted_rows_to_guidance(sd1_model):
    hooks = Hooks()
    parts = []
    hooks.add("cfg_denoiser", lambda s: parts.append(s.cond.parts))
    generate(request(prompt="a cat :1.2 AND a dog :-0.5", steps=1, batch_size=2, negative_prompt="x AND y"),
             sd1_model, hooks=hooks)
    assert parts[0] == [[(0, 1.2), (1, -0.5)], [(2, 1.2), (3, -0.5)]]  # the negative prompt isn't split


# ------------------------------------------------------------------------------------------ cache, options

def test_batches_and_repeated_prompts_are_encoded_once(sd1_model, monkeypatch):
    calls = []
    real = PromptEncoder.encode_batch

    def counting(self, texts, settings=EncodeSettings(), negative=False):
        calls.append(tuple(texts))
        return real(self, texts, settings, negative)

    monkeypatch.setattr(PromptEncoder, "encode_batch", counting)
    conditioning_cache(sd1_model).clear()
    req = request(prompt="a unique [owl:bat:1]", steps=2, batch_size=2, cfg_scale=1.0)
    generate(req, sd1_model)
    assert sorted(calls) == [("a unique owl", "a unique bat"), ("blurry",)]
    generate(req, sd1_model)
    assert len(calls) == 2
    generate(req.copy(override_settings={"CLIP_stop_at_last_layers": 2}), sd1_model)
    assert len(calls) == 4  # clip skip is part of what was encoded


def test_emphasis_setting_is_recorded_when_it_mattered(sd1_model):
    result = generate(request(prompt="a (fox:1.3)", steps=1, override_settings={"emphasis": "No norm"}),
                      sd1_model)
    assert result.extra_params == {"Emphasis": "No norm"}
    plain = generate(request(prompt="a fox", steps=1, override_settings={"emphasis": "No norm"}), sd1_model)
    assert plain.extra_params == {}


def test_bad_prompt_option_is_a_validation_error(sd1_model):
    from modules.errors import ValidationError

    with pytest.raises(ValidationError) as err:
        generate(request(override_settings={"emphasis": "Loud"}), sd1_model)
    assert err.value.field == "override_settings.emphasis"


def test_unreadable_edit_syntax_warns_and_reads_literally(sd1_model):
    encoding = PromptEncoding(PromptEncoder(sd1_model), EncodeSettings(), conditioning_cache(sd1_model))
    [[(schedule, weight)]] = BatchPrompts(encoding, ["a [cat|dog"]).for_pass(10)
    assert len(schedule.entries) == 1 and weight == 1.0
    assert encoding.notes and "literally" in encoding.notes[0]


# ------------------------------------------------------------------------------------------ extra networks

class FakeNetwork:
    def __init__(self, known):
        self.known, self.calls = known, []

    def activate(self, context, params):
        self.calls.append(("activate", [p.items for p in params]))
        for p in params:
            if p.positional[0] not in self.known:
                context.warn(f"lora '{p.positional[0]}' not found")
        if params:
            context.extra_params["Lora hashes"] = "film: abc123"

    def deactivate(self, context):
        self.calls.append(("deactivate",))


def test_extra_network_tags_reach_their_handler_and_leave_the_text(sd1_model):
    registry = ExtraNetworkRegistry()
    lora = FakeNetwork({"film"})
    registry.register("lora", lora)
    hooks = Hooks()
    seen = record_conds(hooks)
    result = generate(request(prompt="a fox <lora:film:0.8> <lora:nope:1:te=0.5> <hypernet:x>", steps=1),
                      sd1_model, hooks=hooks, prompt_env=PromptEnvironment(extra_networks=registry))
    assert lora.calls == [("activate", [["film", "0.8"], ["nope", "1", "te=0.5"]]), ("deactivate",)]
    assert "lora 'nope' not found" in result.notes
    assert any("hypernet" in note for note in result.notes)
    assert result.prompts == ["a fox <lora:film:0.8> <lora:nope:1:te=0.5> <hypernet:x>"]  # infotext keeps tags
    assert result.extra_params["Lora hashes"] == "film: abc123"
    assert torch.allclose(seen[0][2], PromptEncoder(sd1_model).encode("a fox   ").context)


# ------------------------------------------------------------------------------------------ prompts per image

def test_wildcards_are_reproducible_per_image_seed(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "animal.txt").write_text("cat\ndog\nowl\nbat\nfox\n", encoding="utf-8")
    env = PromptEnvironment(wildcards=Wildcards(folder))
    seeds = [11, 12, 13, 14, 15, 16, 11]
    prompts, negatives = prepare_prompts("a __animal__ in {snow|rain|fog}", "{ugly|blurry}", [], seeds, env,
                                         PromptOptions())
    assert prompts[0] == prompts[-1] and negatives[0] == negatives[-1]
    assert len(set(prompts)) > 1
    alone, _ = prepare_prompts("a __animal__ in {snow|rain|fog}", "", [], [13], env, PromptOptions())
    assert alone == [prompts[2]]
    assert all("__" not in p and "{" not in p for p in prompts)
    notes = []
    prepare_prompts("__missing__ {a|b", "", [], [1], env, PromptOptions(), notes)
    assert any("__missing__" in n for n in notes) and any("syntax" in n for n in notes)


def test_generation_records_each_images_expanded_prompt(sd1_model):
    result = generate(request(prompt="a {red|green|blue|black|white} fox", steps=1, batch_size=4), sd1_model)
    assert all(p.startswith("a ") and "{" not in p for p in result.prompts)
    again = generate(request(prompt="a {red|green|blue|black|white} fox", steps=1, seed=1236), sd1_model)
    assert again.prompts == [result.prompts[2]]


def test_comments_follow_the_setting():
    env = PromptEnvironment()
    on, _ = prepare_prompts("a fox # hidden\nsnow", "", [], [1], env, PromptOptions())
    off, _ = prepare_prompts("a fox # hidden\nsnow", "", [], [1], env, PromptOptions(enable_prompt_comments=False))
    assert on == ["a fox \nsnow"] and off == ["a fox # hidden\nsnow"]


def test_engine_writes_emphasis_into_the_infotext(tiny_dir, policy, tmp_path):
    from modules.engine import Engine
    from modules.paths import Paths
    from modules.settings import Settings

    settings = Settings(file=tmp_path / "config.json")
    settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
    engine = Engine(Paths.from_flags(data_dir=str(tiny_dir), outputs_dir=str(tmp_path / "out")), policy, settings)
    try:
        job = engine.generate(request(prompt="a (fox:1.2)", steps=1, do_not_save_samples=True,
                                      override_settings={"emphasis": "No norm"}), timeout=120)
        assert job.error is None
        assert "Emphasis: No norm" in job.result.infotexts[0]
    finally:
        engine.shutdown()
