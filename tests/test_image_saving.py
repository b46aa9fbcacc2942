import datetime
import os
import threading

import piexif
import pytest
from PIL import Image

from modules import image_saving
from modules.image_saving import (
    dated_folder,
    file_name,
    grid_rows,
    make_grid,
    next_sequence_number,
    save_grid,
    save_image,
)
from modules.infotext import read_image_infotext

INFOTEXT = (
    "a cat, (masterpiece:1.2), 猫 ✨\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
    'Model: "my, model", Version: v1.10.1'
)


def solid(color, size=(64, 64), mode="RGB"):
    return Image.new(mode, size, color)


def no_hidden_files(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")] == []


def test_png_carries_parameters_chunk_and_extra_items(tmp_path):
    path = save_image(solid("red"), tmp_path, seed=1234, infotext=INFOTEXT, extra_pnginfo={"postprocessing": "x: 1"})
    assert path == tmp_path / "00000-1234.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.info["parameters"] == INFOTEXT  # where A1111 looks for it
        text, items = read_image_infotext(img)
        assert img.getpixel((0, 0)) == (255, 0, 0)
    assert text == INFOTEXT
    assert items == {"postprocessing": "x: 1"}
    # the unicode text went into an iTXt chunk, the Latin-1 one into tEXt
    data = path.read_bytes()
    assert b"iTXtparameters" in data and b"tEXtpostprocessing" in data


def test_png_without_infotext_has_no_parameters(tmp_path):
    path = save_image(solid("red"), tmp_path, seed=1, infotext=None)
    with Image.open(path) as img:
        assert read_image_infotext(img) == (None, {})


@pytest.mark.parametrize("extension, fmt", [("jpg", "JPEG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_carry_infotext_in_exif_user_comment(tmp_path, extension, fmt):
    path = save_image(solid((0, 0, 255, 128), mode="RGBA"), tmp_path, seed=77, infotext=INFOTEXT, extension=extension)
    assert path.name == f"00000-77.{extension}"
    with Image.open(path) as img:
        assert img.format == fmt and img.mode == "RGB"
        text, items = read_image_infotext(img)
        raw = piexif.load(img.info["exif"])["Exif"][piexif.ExifIFD.UserComment]
    assert text == INFOTEXT
    assert raw.startswith(b"UNICODE\x00")  # piexif's "unicode" encoding, as A1111 writes it
    assert "exif" not in items and "parameters" not in items


def test_exif_comment_without_charset_prefix_reads_as_utf8():
    img = solid("red")
    img.info["exif"] = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: "Steps: 5, ü".encode()}})
    assert read_image_infotext(img)[0] == "Steps: 5, ü"
    img.info["exif"] = b"not exif at all"
    assert read_image_infotext(img) == (None, {})


def test_oversized_webp_falls_back_to_png(tmp_path):
    path = save_image(solid("red", size=(16384, 1)), tmp_path, seed=5, infotext="x", extension="webp")
    assert path.name == "00000-5.png"


def test_unknown_extension_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        save_image(solid("red"), tmp_path, seed=1, infotext=None, extension="bmp")
    assert os.listdir(tmp_path) == []


def test_sequence_numbers_follow_existing_files(tmp_path):
    for name in ["00007-1.png", "00003-2.jpg", "notes.txt", "grid-0009.png", ".hidden-99.png", "00012"]:
        (tmp_path / name).write_bytes(b"")
    assert next_sequence_number(tmp_path) == 13  # "00012" counts: A1111 looks only at the leading number
    assert next_sequence_number(tmp_path, "grid") == 10
    (tmp_path / "00012").unlink()
    assert save_image(solid("red"), tmp_path, seed=55, infotext=None).name == "00008-55.png"
    assert save_image(solid("red"), tmp_path, seed=56, infotext=None).name == "00009-56.png"
    assert save_grid(solid("red"), tmp_path, infotext=None).name == "grid-0010.png"
    assert next_sequence_number(tmp_path / "..", "nothing-here") == 0


def test_file_names():
    assert file_name(3, seed=1234, extension="png") == "00003-1234.png"
    assert file_name(123456, seed=1, extension="jpg") == "123456-1.jpg"
    assert file_name(3, seed=None, extension="png", basename="grid") == "grid-0003.png"


def test_a_taken_name_is_never_overwritten(tmp_path, monkeypatch):
    # Another writer (another process) took our name after we counted: move on, don't replace it.
    (tmp_path / "00000-2.png").write_bytes(b"theirs")
    monkeypatch.setattr(image_saving, "next_sequence_number", lambda folder, basename="": 0)
    path = save_image(solid("red"), tmp_path, seed=2, infotext=None)
    assert path.name == "00001-2.png"
    assert (tmp_path / "00000-2.png").read_bytes() == b"theirs"
    assert no_hidden_files(tmp_path)


def test_without_hard_links_it_falls_back_to_replace(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "00000-2.png").write_bytes(b"theirs")
    monkeypatch.setattr(image_saving, "next_sequence_number", lambda folder, basename="": 0)
    path = save_image(solid("red"), tmp_path, seed=2, infotext="t")
    assert path.name == "00001-2.png" and (tmp_path / "00000-2.png").read_bytes() == b"theirs"
    with Image.open(path) as img:
        assert img.info["parameters"] == "t"
    assert no_hidden_files(tmp_path)


def test_file_appears_only_complete(tmp_path, monkeypatch):
    seen = []
    real_place = image_saving._place

    def checking_place(temp, final):
        # At the moment of naming, the temp file is hidden, complete, and the final name absent.
        seen.append((temp.name.startswith("."), final.exists()))
        with Image.open(temp) as img:
            img.load()
        return real_place(temp, final)

    monkeypatch.setattr(image_saving, "_place", checking_place)
    save_image(solid("red"), tmp_path, seed=1, infotext="x")
    assert seen == [(True, False)]
    assert no_hidden_files(tmp_path)


def test_failure_while_naming_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken(src, dst):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(os, "link", broken)
    with pytest.raises(RuntimeError):
        save_image(solid("red"), tmp_path, seed=1, infotext="x")
    assert os.listdir(tmp_path) == []


def test_eight_threads_get_eight_distinct_files(tmp_path):
    start = threading.Barrier(8)
    paths, errors = [], []

    def worker(i):
        try:
            start.wait()
            paths.append(save_image(solid((i * 30, 0, 0)), tmp_path, seed=i, infotext=f"Steps: {i}, Seed: {i}, x: y"))
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(paths)) == 8
    assert sorted(p.name[:5] for p in paths) == [f"{n:05}" for n in range(8)]
    for p in paths:
        seed = int(p.stem.split("-")[1])
        with Image.open(p) as img:
            assert img.info["parameters"] == f"Steps: {seed}, Seed: {seed}, x: y"
            assert img.getpixel((0, 0)) == (seed * 30, 0, 0)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)  # and no temp files


def test_dated_folder(tmp_path):
    folder = dated_folder(tmp_path, "txt2img-images")
    assert folder == tmp_path / "txt2img-images" / datetime.date.today().isoformat()
    assert folder.is_dir()
    assert dated_folder(tmp_path, "txt2img-images") == folder  # idempotent


@pytest.mark.parametrize("count, rows, rows_no_gaps", [
    (1, 1, 1), (2, 1, 1), (3, 2, 1), (4, 2, 2), (5, 2, 1), (6, 2, 2), (8, 3, 2), (9, 3, 3), (12, 3, 3), (16, 4, 4),
])
def test_grid_rows(count, rows, rows_no_gaps):
    assert grid_rows(count) == rows
    assert grid_rows(count, prevent_empty_spots=True) == rows_no_gaps


def test_make_grid_layout_and_colors():
    colors = ["red", "lime", "blue"]
    grid = make_grid([solid(c, (10, 20)) for c in colors])  # 2 rows x 2 cols, last cell empty
    assert grid.size == (20, 40) and grid.mode == "RGB"
    assert grid.getpixel((5, 10)) == (255, 0, 0)
    assert grid.getpixel((15, 10)) == (0, 255, 0)
    assert grid.getpixel((5, 30)) == (0, 0, 255)
    assert grid.getpixel((15, 30)) == (255, 255, 255)  # background
    assert make_grid([solid("red")] * 2, rows=5).size == (64, 128)  # rows clamp to the image count
    assert make_grid([solid("red")] * 6, rows=3).size == (128, 192)


def test_make_grid_centres_smaller_images():
    grid = make_grid([solid("red", (10, 10)), solid("blue", (4, 4))], rows=1, background="black")
    assert grid.size == (20, 10)
    assert grid.getpixel((15, 5)) == (0, 0, 255)
    assert grid.getpixel((10, 0)) == (0, 0, 0)


def test_make_grid_refuses_nonsense():
    with pytest.raises(ValueError):
        make_grid([])
    with pytest.raises(ValueError):
        make_grid([solid("red")], rows=0)


def test_saved_grid_keeps_its_infotext(tmp_path):
    grid = make_grid([solid("red"), solid("blue")])
    path = save_grid(grid, tmp_path, infotext=INFOTEXT)
    assert path.name == "grid-0000.png"
    with Image.open(path) as img:
        assert read_image_infotext(img)[0] == INFOTEXT
        assert img.size == (128, 64)
