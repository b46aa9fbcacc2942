"""Prompt syntax, read exactly as A1111 reads it. Expected values are A1111's own doctest outputs
(modules/prompt_parser.py, v1.10), or what its parser returns for the input."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.errors import PromptSyntaxError
from modules.extra_networks import parse_extra_networks
from modules.prompt_parser import (parse_prompt_attention, parse_prompt_edits, parse_prompt_schedule,
                                   prompt_schedules, split_and, strip_comments)


# ------------------------------------------------------------------------------------------ emphasis

@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("[quiet]", [("quiet", 1 / 1.1)]),
    ("[[quiet]]", [("quiet", 1 / 1.1 / 1.1)]),
    ("(word: 1.3 )", [("word", 1.3)]),
    ("(a:b)", [("a:b", 1.1)]),  # not a number: the colon is text and the brackets are ×1.1
    ("[unclosed", [("unclosed", 1 / 1.1)]),
    ("stray) and ]", [("stray) and ]", 1.0)]),
    ("(a:1.2.3) b", [("a:1.2.3", 1.1), (" b", 1.0)]),  # A1111 raises here; read like (a:b) instead
    ("(:.)", [(":.", 1.1)]),
    ("x:.)", [("x:.)", 1.0)]),
    ("\\\\ back\\slash", [("\\ backslash", 1.0)]),  # an escaped backslash stays, a lone one goes
    ("", [("", 1.0)]),
])
def test_attention_matches_a1111(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_break_splits_into_a_marker():
    assert parse_prompt_attention("a cat BREAK a (dog)") == [("a cat", 1.0), ("BREAK", -1.0), ("a ", 1.0),
                                                               ("dog", 1.1)]
    assert parse_prompt_attention("BREAKfast") == [("BREAKfast", 1.0)]  # a whole word only
    assert parse_prompt_attention("a\nBREAK\nb") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]


# ------------------------------------------------------------------------------------------ editing

def g(prompt, steps=10, hires_steps=None):
    return [list(entry) for entry in parse_prompt_schedule(prompt, steps, hires_steps)]


@pytest.mark.parametrize("prompt, expected", [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[1, "a"], [2, "(b:1.1)"], [3, "a"], [4, "(b:1.1)"], [5, "a"], [6, "(b:1.1)"], [7, "a"],
                     [8, "(b:1.1)"], [9, "a"], [10, "(b:1.1)"]]),
    ("[fe|]male", [[1, "female"], [2, "male"], [3, "female"], [4, "male"], [5, "female"], [6, "male"],
                   [7, "female"], [8, "male"], [9, "female"], [10, "male"]]),
    ("[fe|||]male", [[1, "female"], [2, "male"], [3, "male"], [4, "male"], [5, "female"], [6, "male"],
                     [7, "male"], [8, "male"], [9, "female"], [10, "male"]]),
    # beyond the doctests, checked against A1111's parser:
    ("[cat:dog:0.5]", [[5, "cat"], [10, "dog"]]),
    ("[cat::4]", [[4, "cat"], [10, ""]]),
    ("[a:b:0]", [[10, "b"]]),
    ("[a:b:-3]", [[10, "b"]]),
    ("[a:b:20]", [[10, "a"]]),
    ("[a:b:1e1]", [[10, "a"]]),  # no decimal point: a step number
    ("[a:b: 3 ]", [[3, "a"], [10, "b"]]),
    ("[a:b:c:3]", [[10, "[a:b:c:3]"]]),
    ("[[a:2]:5]", [[2, ""], [5, ""], [10, "a"]]),
    ("x:[a:3]:y", [[3, "x::y"], [10, "x:a:y"]]),
    ("[a\\:b:3]", [[3, ""], [10, "a\\:b"]]),
    ("(x [a|b] :1.2)", [[s, f"(x {'a' if s % 2 else 'b'} :1.2)"] for s in range(1, 11)]),
    ("[[a:3]", [[3, "["], [10, "[a"]]),
])
def test_schedules_match_a1111(prompt, expected):
    assert g(prompt) == expected


@pytest.mark.parametrize("prompt", ["a | b", "a [{b|d{:.5] c", "[a|b", "[a|b:3]", "a\\", "a\\\nb", "{a|b}"])
def test_unreadable_prompts_fall_back_to_the_literal_text_with_a_warning(prompt):
    with pytest.raises(PromptSyntaxError):
        parse_prompt_schedule(prompt, 10)
    warnings = []
    assert prompt_schedules([prompt], 10, warnings=warnings) == [[(10, prompt)]]
    assert len(warnings) == 1 and "literally" in warnings[0]


def test_hires_pass_uses_fractions_above_one_and_steps_past_the_first_pass():
    assert g("a [b:.5] c", 10, 10) == [[10, "a b c"]]
    assert g("a [b:1.5] c", 10, 10) == [[5, "a  c"], [10, "a b c"]]
    assert g("[cat:dog:14]", 10, 8) == [[4, "cat"], [8, "dog"]]
    assert g("[cat:dog:4]", 10, 8) == [[8, "dog"]]
    assert g("[a|b]", 10, 3) == [[1, "a"], [2, "b"], [3, "a"]]


def test_nested_edits_and_alternation_inside_emphasis():
    assert g("((a [red:blue:3] hat))", 4) == [[3, "((a red hat))"], [4, "((a blue hat))"]]
    assert g("[[a|b]:c:2]", 4) == [[1, "a"], [2, "b"], [3, "c"], [4, "c"]]  # A1111 lists every step


def test_parse_tree_exposes_edits():
    nodes = parse_prompt_edits("a [b:c:.5] [d|e]")
    kinds = [type(n).__name__ for n in nodes]
    assert kinds == ["str", "Edit", "str", "Alternation"]


def test_a_long_prompt_parses_quickly():
    import time

    prompt = ", ".join(f"(tag{i}:1.1) [x{i}:y{i}:0.{i % 9 + 1}]" for i in range(200))
    start = time.perf_counter()
    schedule = parse_prompt_schedule(prompt, 30)
    assert time.perf_counter() - start < 1.0
    assert len(schedule) == 10


def test_deep_nesting_is_a_syntax_error_not_a_crash():
    with pytest.raises(PromptSyntaxError):
        parse_prompt_schedule("[" * 5000 + "a" + "]" * 5000, 10)


# ------------------------------------------------------------------------------------------ AND, comments, tags

@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat :1.2 AND a dog :0.8", [("a cat", 1.2), (" a dog", 0.8)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat:-0.5 AND dog", [("a cat", -0.5), (" dog", 1.0)]),
    ("a cat :.5", [("a cat", 0.5)]),
    ("ANDROID AND", [("ANDROID", 1.0), ("", 1.0)]),
    ("(x:1.2) AND [y:z:0.5]", [("(x:1.2)", 1.0), (" [y:z:0.5]", 1.0)]),
])
def test_and_splits_with_weights(prompt, expected):
    assert split_and(prompt) == expected


@pytest.mark.parametrize("text, expected", [
    ("a cat\n# a comment\na hat", "a cat\na hat"),
    ("# first line\nrest", "\nrest"),
    ("a cat # note", "a cat \n"),
    ("no comment", "no comment"),
    ("a\n#x\n#y\nb", "a\n\nb"),
])
def test_comments_are_removed_as_a1111_removes_them(text, expected):
    assert strip_comments(text) == expected


def test_extra_network_tags_are_cut_out_with_their_arguments():
    text, found = parse_extra_networks("a cat <lora:film grain:0.8:te=0.5>, <hypernet:x> <lora:b>")
    assert text == "a cat ,  "
    assert [p.items for p in found["lora"]] == [["film grain", "0.8", "te=0.5"], ["b"]]
    assert found["lora"][0].positional == ["film grain", "0.8"]
    assert found["lora"][0].named == {"te": "0.5"}
    assert [p.items for p in found["hypernet"]] == [["x"]]
    assert parse_extra_networks("a <b> <:c> <d:>")[0] == "a <b> <:c> <d:>"


# ------------------------------------------------------------------------------------------ fuzzing

SYNTAX = list("[]():|\\ ab1.5-+e\n,#<>{}_") + ["AND", "BREAK", "[a:", ":0.5]", "[x|y]", "(z:1.2)"]


@settings(max_examples=10000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(st.one_of(st.lists(st.sampled_from(SYNTAX), max_size=24).map("".join), st.text(max_size=40)),
       st.integers(min_value=1, max_value=40), st.one_of(st.none(), st.integers(min_value=1, max_value=40)))
def test_random_prompts_raise_nothing_but_prompt_syntax_errors(text, steps, hires_steps):
    try:
        schedule = parse_prompt_schedule(text, steps, hires_steps)
    except PromptSyntaxError:
        assert prompt_schedules([text], steps, hires_steps) == [[(hires_steps or steps, text)]]
    else:
        assert schedule[-1][0] == (hires_steps or steps)
        assert [s for s, _ in schedule] == sorted({s for s, _ in schedule})
    for part, weight in split_and(text):
        parse_prompt_attention(part)
    parse_extra_networks(strip_comments(text))
