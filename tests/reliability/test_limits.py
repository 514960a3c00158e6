"""Names longer than a file name can be: a clear nerfcache error, not an OSError from deep inside.

A path component is at most 255 bytes (NAME_MAX on Linux and macOS). Character and model names
are limited to 128 characters, but 128 CJK characters are 384 bytes in UTF-8.
"""

from __future__ import annotations

import pytest

from nerfcache import InvalidInputError, MissingFileError
from tests.reliability.helpers import generate, tree

LONG_NAMES = [
    pytest.param("\u7eeb" * 86, id="86-CJK-characters-258-bytes"),
    pytest.param("\U0001f600" * 64, id="64-emoji-256-bytes"),
]


@pytest.mark.parametrize("explicit_image", [False, True])
@pytest.mark.parametrize("name", LONG_NAMES)
def test_a_character_name_too_long_for_a_folder_is_invalid(
    nerf_project, tmp_path, name, explicit_image
) -> None:
    before = tree(tmp_path)
    image = nerf_project.character_dir() / "images" / "portrait.png" if explicit_image else None
    with pytest.raises(InvalidInputError, match="character"):
        generate(nerf_project, character=name, test_image=image)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", LONG_NAMES)
def test_a_model_name_too_long_for_a_file_is_invalid(nerf_project, tmp_path, name) -> None:
    before = tree(tmp_path)
    with pytest.raises(InvalidInputError, match="model"):
        generate(nerf_project, model_name=name + ".pkl")
    assert tree(tmp_path) == before


def test_an_audio_path_too_long_to_exist_is_missing(nerf_project, tmp_path) -> None:
    before = tree(tmp_path)
    with pytest.raises((MissingFileError, InvalidInputError), match="audio"):
        generate(nerf_project, audio=tmp_path / ("a" * 300 + ".wav"))
    assert tree(tmp_path) == before
