from __future__ import annotations

from pathlib import Path

import pytest

from nerfcache import InvalidInputError, MissingFileError, Settings
from nerfcache.characters import (
    character_dir,
    find_test_image,
    resolve_audio,
    resolve_model,
    validate_character,
)
from nerfcache.testing import write_png


@pytest.mark.parametrize(
    "name",
    ["ayanami", "绫波丽", "Аянами", "rei_2", "a b", "x;y", "$(whoami)", "a" * 128, "a..", "a.b"],
)
def test_good_character_names(name: str) -> None:
    assert validate_character(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", "start with '.'"),
        ("..", "start with '.'"),
        (".hidden", "start with '.'"),
        ("../etc", "single name"),
        ("a/b", "single name"),
        ("a\\b", "single name"),
        ("/abs", "single name"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x1b[31m", "control"),
        (" padded", "white space"),
        ("padded ", "white space"),
        ("a" * 129, "longer than 128"),
    ],
)
def test_bad_character_names(name: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid character name") as info:
        validate_character(name)
    assert why in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.value == name


def test_non_string_character_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="string"):
        validate_character(42)  # type: ignore[arg-type]


def test_character_dir_is_inside_cache_root(tmp_path) -> None:
    s = Settings(project_root=tmp_path)
    assert character_dir(s, "绫波丽") == tmp_path / "assets" / "charactor" / "绫波丽"


def test_a_planted_symlink_leading_outside_is_refused(tmp_path) -> None:
    s = Settings(project_root=tmp_path)
    s.cache_root.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (s.cache_root / "evil").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidInputError, match="outside cache_root"):
        character_dir(s, "evil")


class TestFindTestImage:
    def test_explicit_image_wins(self, tmp_path) -> None:
        s = Settings(project_root=tmp_path)
        img = write_png(tmp_path / "given.png", (1, 2, 3))
        write_png(s.cache_root / "rei" / "images" / "a.png", (1, 2, 3))
        assert find_test_image(s, "rei", img) == img

    def test_registry_before_folder(self, tmp_path) -> None:
        write_png(tmp_path / "reg" / "rei.jpg", (1, 2, 3))
        s = Settings(project_root=tmp_path, characters={"rei": "reg/rei.jpg"})
        write_png(s.cache_root / "rei" / "images" / "a.png", (1, 2, 3))
        assert find_test_image(s, "rei") == tmp_path / "reg" / "rei.jpg"

    def test_images_folder_first_sorted_then_character_folder(self, tmp_path) -> None:
        s = Settings(project_root=tmp_path)
        folder = s.cache_root / "rei"
        write_png(folder / "top.png", (1, 2, 3))
        assert find_test_image(s, "rei") == folder / "top.png"
        write_png(folder / "images" / "b.png", (1, 2, 3))
        write_png(folder / "images" / "a.jpg", (1, 2, 3))
        (folder / "images" / "0-notes.txt").write_text("not an image")
        assert find_test_image(s, "rei") == folder / "images" / "a.jpg"

    def test_byproducts_of_the_old_launcher_are_not_portraits(self, tmp_path) -> None:
        s = Settings(project_root=tmp_path)
        folder = s.cache_root / "rei"
        for name in ("img_tesnor_224_resize_prc.png", "output_from_w_pivot_w_G_PTI.png", "rei.png"):
            write_png(folder / name, (1, 2, 3))
        assert find_test_image(s, "rei") == folder / "rei.png"

    def test_nothing_found_says_where_to_put_it(self, tmp_path) -> None:
        s = Settings(project_root=tmp_path)
        with pytest.raises(MissingFileError, match=r"put a \.jpg or \.png in") as info:
            find_test_image(s, "nobody")
        assert isinstance(info.value, FileNotFoundError)
        assert not s.cache_root.exists()

    @pytest.mark.parametrize("where", ["explicit", "registry"])
    def test_missing_given_image(self, tmp_path, where: str) -> None:
        s = Settings(project_root=tmp_path, characters={"rei": "gone.png"})
        with pytest.raises(MissingFileError, match="does not exist"):
            find_test_image(s, "rei", tmp_path / "gone.png" if where == "explicit" else None)


class TestResolveModel:
    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        s = Settings(project_root=tmp_path)
        s.model_dir.mkdir(parents=True)
        (s.model_dir / "ffhq.pkl").write_bytes(b"net")
        return s

    def test_existing_model(self, settings: Settings) -> None:
        assert resolve_model(settings, "ffhq.pkl") == settings.model_dir / "ffhq.pkl"

    @pytest.mark.parametrize(
        "name", ["", "../ffhq.pkl", "sub/ffhq.pkl", "/abs/ffhq.pkl", "ffhq.pt", "ffhq", ".pkl"]
    )
    def test_bad_model_names(self, settings: Settings, name: str) -> None:
        with pytest.raises(InvalidInputError, match="invalid model name"):
            resolve_model(settings, name)

    def test_missing_model_lists_what_is_there(self, settings: Settings) -> None:
        with pytest.raises(MissingFileError, match=r"available: ffhq\.pkl"):
            resolve_model(settings, "celeba.pkl")

    def test_a_folder_named_like_a_model_is_not_a_model(self, settings: Settings) -> None:
        (settings.model_dir / "dir.pkl").mkdir()
        with pytest.raises(MissingFileError):
            resolve_model(settings, "dir.pkl")


class TestResolveAudio:
    def test_existing_file_made_absolute(self, tmp_path) -> None:
        (tmp_path / "a.wav").write_bytes(b"RIFF")
        assert resolve_audio("a.wav") == tmp_path / "a.wav"

    @pytest.mark.parametrize(
        ("make", "message"), [(False, "does not exist"), (True, "not a regular file")]
    )
    def test_missing_or_folder(self, tmp_path, make: bool, message: str) -> None:
        if make:
            (tmp_path / "a.wav").mkdir()
        with pytest.raises(MissingFileError, match=message):
            resolve_audio(tmp_path / "a.wav")

    def test_a_name_too_long_for_the_filesystem(self, tmp_path) -> None:
        with pytest.raises(MissingFileError, match="cannot be read"):
            resolve_audio(tmp_path / ("a" * 300 + ".wav"))

    def test_nul_byte(self) -> None:
        with pytest.raises(InvalidInputError, match="NUL"):
            resolve_audio(Path("a\x00.wav"))
