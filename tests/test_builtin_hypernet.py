"""The built-in hypernetwork extension (extensions-builtin/hypernetworks) through the real engine, with
hypernetwork files written here as A1111 saves them."""
import numpy as np
import pytest
import torch

from modules import extension_lists, extra_network_cards
from modules.attention_hooks import attention_kv_hooks
from tests.builtin_helpers import close, make_engine, run


def a1111_module(dim: int, generator: torch.Generator) -> dict:
    """The state dict A1111 saves for layer_structure [1, 2, 2, 1], relu, dropout (one Dropout, after the first
    hidden layer) and no output activation: Linear, ReLU, Dropout, Linear, ReLU, Linear."""
    sequential = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                     torch.nn.Linear(2 * dim, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim))
    for p in sequential.parameters():
        p.data = torch.randn(p.shape, generator=generator) * 0.5
    return {f"linear.{k}": v for k, v in sequential.state_dict().items()}


def write_hypernetwork(path, sizes=(32, 64), seed=4, **extra):
    g = torch.Generator().manual_seed(seed)
    data = {size: (a1111_module(size, g), a1111_module(size, g)) for size in sizes}
    data.update({"step": 2000, "name": path.stem, "layer_structure": [1, 2, 2, 1], "activation_func": "relu",
                 "is_layer_norm": False, "weight_initialization": "Normal", "use_dropout": True,
                 "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd1", "activate_output": False,
                 "last_layer_dropout": False})
    data.update(extra)
    torch.save(data, path)
    return path


class Payload:
    """Not a tensor: a pickle that needs this class must be refused."""


@pytest.fixture()
def engine(tiny_dir, policy, tmp_path):
    eng = make_engine(tiny_dir, policy, tmp_path, "hypernetworks")
    yield eng
    close(eng)


def test_hypernetwork_changes_the_image_and_goes_away_exactly(engine):
    write_hypernetwork(engine.paths.hypernetwork_dir / "anime.pt")
    base, _, _ = run(engine)
    with_hn, text, notes = run(engine, prompt="a lighthouse <hypernet:anime:1>")
    assert not notes, notes
    assert np.abs(with_hn - base).mean() > 1.0
    assert text.startswith("a lighthouse <hypernet:anime:1>\n")
    assert attention_kv_hooks(engine.models.current) == []
    weaker, _, _ = run(engine, prompt="a lighthouse <hypernet:anime:0.3>")
    zero, _, _ = run(engine, prompt="a lighthouse <hypernet:anime:0>")
    assert not np.array_equal(weaker, with_hn) and not np.array_equal(weaker, base)
    assert np.array_equal(zero, base)  # strength 0 adds nothing
    again, _, _ = run(engine)
    assert np.array_equal(again, base)


def test_cross_attention_only_hypernetwork_and_two_at_once(engine):
    write_hypernetwork(engine.paths.hypernetwork_dir / "anime.pt")
    write_hypernetwork(engine.paths.hypernetwork_dir / "text-only.pt", sizes=(32,), seed=8)  # context width 32
    base, _, _ = run(engine)
    text_only, _, _ = run(engine, prompt="a lighthouse <hypernet:text-only:1>")
    both, _, _ = run(engine, prompt="a lighthouse <hypernet:anime:1> <hypernet:text-only:1>")
    anime, _, _ = run(engine, prompt="a lighthouse <hypernet:anime:1>")
    assert not np.array_equal(text_only, base)
    assert not np.array_equal(both, anime) and not np.array_equal(both, text_only)


def test_pickles_with_objects_are_refused_and_the_job_goes_on(engine):
    torch.save({32: ({"linear.0.weight": torch.zeros(64, 32)}, {}), "trainer": Payload()},
               engine.paths.hypernetwork_dir / "sneaky.pt")
    base, _, _ = run(engine)
    image, _, notes = run(engine, prompt="a lighthouse <hypernet:sneaky:1>")
    assert np.array_equal(image, base)
    assert any("hypernetwork 'sneaky' can't be used" in n and "refused" in n for n in notes), notes
    _, _, notes = run(engine, prompt="a lighthouse <hypernet:missing:1>")
    assert any("hypernetwork 'missing' not found" in n for n in notes), notes


def test_list_and_cards(engine):
    path = write_hypernetwork(engine.paths.hypernetwork_dir / "anime.pt")
    assert extension_lists.get_list("hypernetworks") == [{"name": "anime", "path": str(path)}]
    [card] = extra_network_cards.extra_network_cards()["hypernetwork"]
    assert card.tag == "<hypernet:anime:1>" and card.path == path
