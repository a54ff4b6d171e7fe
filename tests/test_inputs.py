"""Bad and unusual inputs: each gives a clean array or one clear sentence."""

import numpy as np
import pytest
from PIL import Image

from pacl_core.errors import PACLError
from pacl_core.inputs import MAX_SIDE, MAX_WORDS, check_out_folder, check_pixels, load_image, parse_words, to_rgb_array


def test_rgba_grayscale_16bit_and_palette_files(tmp_path, rng):
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and (out == 255).all()

    gray = rng.integers(0, 256, (17, 9), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.shape == (17, 9, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()

    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a real 16-bit PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    out = load_image(tmp_path / "deep.png")
    assert out.shape == (64, 64, 3)
    expected = np.clip(deep / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1  # scaled, not clipped at 255
    assert out.max() > 200 and out.min() < 5

    Image.fromarray(gray, "L").convert("P").save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").shape == (17, 9, 3)


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    assert load_image(tmp_path / "one.png").tolist() == [[[10, 20, 30]]]


@pytest.mark.slow
def test_huge_image_is_downscaled(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (10000, 10000), (200, 100, 50)).save(path)
    out = load_image(path)
    assert out.shape == (MAX_SIDE, MAX_SIDE, 3)
    assert tuple(out[5, 5]) == (200, 100, 50)


def test_non_image_and_corrupt_files(tmp_path, rng):
    (tmp_path / "notes.txt").write_text("hello, I am not an image")
    with pytest.raises(PACLError, match="not an image file") as e:
        load_image(tmp_path / "notes.txt")
    assert "\n" not in str(e.value)

    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(PACLError, match="corrupt or truncated"):
        load_image(tmp_path / "cut.png")

    with pytest.raises(PACLError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(PACLError, match="is a folder"):
        load_image(tmp_path)


def test_arrays_of_every_kind(rng):
    assert to_rgb_array(rng.integers(0, 256, (5, 6), dtype=np.uint8)).shape == (5, 6, 3)
    assert to_rgb_array(rng.integers(0, 256, (5, 6, 1), dtype=np.uint8)).shape == (5, 6, 3)
    assert to_rgb_array(rng.random((5, 6, 3))).dtype == np.uint8
    u16 = np.full((4, 4, 3), 65535, np.uint16)
    assert (to_rgb_array(u16) == 255).all()
    with pytest.raises(PACLError, match="shape"):
        to_rgb_array(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(PACLError, match="expected an image"):
        to_rgb_array(42)


def test_word_parsing():
    assert parse_words("dog, grass ,  sky") == (["dog", "grass", "sky"], [])
    assert parse_words(["  big   dog ", "cat"]) == (["big dog", "cat"], [])
    words, notes = parse_words("dog, Dog, cat, cat")
    assert words == ["dog", "cat"] and notes == ["removed duplicate words: Dog, cat"]
    for empty in ("", " , ,", [], None):
        with pytest.raises(PACLError, match="no words given"):
            parse_words(empty)
    with pytest.raises(PACLError, match=f"200 words given; at most {MAX_WORDS}"):
        parse_words([f"w{i}" for i in range(200)])
    long = "x" * 500
    assert parse_words([long, "🐶", "Straße"])[0] == [long, "🐶", "Straße"]


def test_out_folder_checks_create_nothing(tmp_path, monkeypatch):
    target = tmp_path / "new" / "deeper"
    assert check_out_folder(target) == target and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the write check leaves nothing behind"
    (tmp_path / "file").write_text("x")
    with pytest.raises(PACLError, match="exists and is not a folder"):
        check_out_folder(tmp_path / "file")
    with pytest.raises(PACLError, match="cannot be made, .*file is not a folder"):
        check_out_folder(tmp_path / "file" / "sub")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pacl_core.inputs.tempfile.mkdtemp", read_only)
    with pytest.raises(PACLError, match=r"cannot write there \(Permission denied\)"):
        check_out_folder(tmp_path / "ro")


@pytest.mark.parametrize("value", [0, -1, MAX_SIDE + 1, 2.5, True, "64"])
def test_pixel_sizes_must_be_whole_and_bounded(value):
    check_pixels("size", None)
    check_pixels("size", 1)
    check_pixels("size", MAX_SIDE)
    with pytest.raises(PACLError, match=f"size must be a whole number of pixels from 1 to {MAX_SIDE}"):
        check_pixels("size", value)
