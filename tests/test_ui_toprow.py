"""The prompt boxes' `N/75` token counters (no browser: the handler functions), with textual-inversion
embeddings counted as A1111 counts them: each as its number of vectors."""
from modules.text_encoding import PromptEncoder
from modules.ui import toprow
from tests.builtin_helpers import close, make_engine, run
from tests.test_builtin_ti import a1111_pt


def test_an_embedding_counts_as_its_vectors(tiny_dir, policy, tmp_path):
    engine = make_engine(tiny_dir, policy, tmp_path, "textual_inversion")
    try:
        assert toprow.count_tokens(engine, "a lighthouse") == (2, 75)  # before a model loads: the tokenizer
        a1111_pt(engine.paths.embeddings_dir / "onevec.pt", count=1)  # its name is 2 tokens as text
        a1111_pt(engine.paths.embeddings_dir / "sixvec.pt", count=6)  # 3 tokens as text
        run(engine)  # loads the model
        assert PromptEncoder(engine.models.current).count_tokens("a onevec, sixvec")[0] == 8  # as plain text
        assert toprow.count_tokens(engine, "a onevec") == (2, 75)
        assert toprow.count_tokens(engine, "a onevec, sixvec", negative=True) == (9, 75)
        assert "9/75" in toprow.counter_html(engine, "a onevec, sixvec")
        # 72 words and a 6-vector embedding: it is never split, so the first chunk is padded to 75 (as A1111).
        assert toprow.count_tokens(engine, "cat " * 72 + "sixvec") == (81, 150)
    finally:
        close(engine)
