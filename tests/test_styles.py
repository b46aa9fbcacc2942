"""styles.csv as A1111 reads, applies, extracts and writes it."""
import csv

import pytest

from modules.prompts import PromptEnvironment, PromptOptions, prepare_prompts
from modules.styles import PromptStyle, StyleDatabase, apply_styles_to_prompt, extract_style_text_from_prompt


@pytest.fixture()
def db(tmp_path) -> StyleDatabase:
    path = tmp_path / "styles.csv"
    path.write_text(
        "name,prompt,negative_prompt\n"
        'cinematic,"cinematic still of {prompt}, film grain","cartoon, {prompt}"\n'
        'sharp,"sharp focus, 8k",blurry\n'
        "# disabled,not,used\n"
        'quoted,"a ""quoted"", multi\nline prompt",\n',
        encoding="utf-8-sig")
    return StyleDatabase(path)


def test_reads_a1111_styles_csv(db):
    assert db.names() == ["cinematic", "sharp", "quoted"]  # rows whose name starts with # are skipped
    assert db.styles["quoted"].prompt == 'a "quoted", multi\nline prompt'
    assert db.styles["sharp"] == PromptStyle("sharp", "sharp focus, 8k", "blurry", str(db.path))


@pytest.mark.parametrize("styles, prompt, expected", [
    (["sharp"], "a fox", "a fox, sharp focus, 8k"),
    (["cinematic"], "a fox", "cinematic still of a fox, film grain"),
    (["sharp", "cinematic"], "a fox", "cinematic still of a fox, sharp focus, 8k, film grain"),
    (["cinematic", "sharp"], "a fox", "cinematic still of a fox, film grain, sharp focus, 8k"),
    (["sharp"], "", "sharp focus, 8k"),
    (["sharp"], "  a fox  ", "a fox, sharp focus, 8k"),
    (["nope"], "a fox", "a fox"),
])
def test_applies_styles_in_order(db, styles, prompt, expected):
    assert db.apply_styles_to_prompt(prompt, styles) == expected


def test_negative_styles_apply_the_same_way(db):
    assert db.apply_negative_styles_to_prompt("ugly", ["sharp", "cinematic"]) == "cartoon, ugly, blurry"


def test_save_then_load_round_trips_and_keeps_a_backup(db, tmp_path):
    db.set("new one", "portrait, {prompt}", "")
    db.delete("sharp")
    db.save_styles()
    again = StyleDatabase(db.path)
    assert {n: (s.prompt, s.negative_prompt) for n, s in again.styles.items()} == \
        {n: (s.prompt, s.negative_prompt) for n, s in db.styles.items()}
    assert (tmp_path / "styles.csv.bak").read_text(encoding="utf-8-sig").count("sharp focus") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styles.csv", "styles.csv.bak"]  # no temp files left
    with open(db.path, encoding="utf-8-sig", newline="") as f:
        assert next(csv.reader(f)) == ["name", "prompt", "negative_prompt"]


def test_missing_file_is_an_empty_database_and_old_two_column_files_load(tmp_path):
    assert StyleDatabase(tmp_path / "none.csv").styles == {}
    old = tmp_path / "old.csv"
    old.write_text("name,text\nvivid,vivid colors\n", encoding="utf-8")
    assert StyleDatabase(old).styles["vivid"].prompt == "vivid colors"


def test_extract_style_text_matches_a1111():
    assert extract_style_text_from_prompt("masterpiece", "1girl, art by greg, masterpiece") == \
        (True, "1girl, art by greg")
    assert extract_style_text_from_prompt("masterpiece, {prompt}", "masterpiece, 1girl, art by greg") == \
        (True, "1girl, art by greg")
    assert extract_style_text_from_prompt("masterpiece, {prompt}", "exquisite, 1girl, art by greg") == \
        (False, "exquisite, 1girl, art by greg")


@pytest.mark.parametrize("styles", [["sharp"], ["cinematic"], ["cinematic", "sharp"], ["sharp", "cinematic"]])
def test_pasted_prompts_give_their_styles_back(db, styles):
    prompt = db.apply_styles_to_prompt("a fox in the snow", styles)
    negative = db.apply_negative_styles_to_prompt("ugly", styles)
    found, bare, bare_negative = db.extract_styles_from_prompt(prompt, negative)
    assert sorted(found) == sorted(styles)
    assert (bare, bare_negative) == ("a fox in the snow", "ugly")
    assert db.apply_styles_to_prompt(bare, found) == prompt  # re-applying the found order rebuilds the prompt


def test_unstyled_prompt_extracts_nothing(db):
    assert db.extract_styles_from_prompt("a fox", "ugly") == ([], "a fox", "ugly")


def test_request_styles_are_applied_to_every_image(db):
    notes = []
    prompts, negatives = prepare_prompts("a fox", "ugly", ["sharp", "missing"], [1, 2], PromptEnvironment(styles=db),
                                         PromptOptions(), notes)
    assert prompts == ["a fox, sharp focus, 8k"] * 2 and negatives == ["ugly, blurry"] * 2
    assert notes == ["style 'missing' not found"]
    _, _ = prepare_prompts("a fox", "", ["sharp"], [1], PromptEnvironment(), PromptOptions(), notes)
    assert "no styles database" in notes[-1]


def test_module_functions_match_the_database(db):
    assert apply_styles_to_prompt("x", ["{prompt} y", "z"]) == "x y, z"
