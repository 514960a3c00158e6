"""Check what a caller names (character, model, audio) and find a character's test image."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from nerfcache.config import Settings
from nerfcache.errors import InvalidInputError, MissingFileError

__all__ = [
    "BYPRODUCTS",
    "IMAGE_SUFFIXES",
    "character_dir",
    "find_test_image",
    "is_byproduct",
    "resolve_audio",
    "resolve_model",
    "validate_character",
]

MAX_NAME_LENGTH = 128
MAX_NAME_BYTES = 255  # what most filesystems take for one name
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BYPRODUCTS = ("output_from_w_pivot_w_G_PTI.png", "img_tesnor_224_resize_prc.png")
"""PNGs the cache-capable script writes into its cache dir on every run. The original
launcher's cache dir was the character folder, so they are found there: never a portrait, and
``clear`` removes them. (``fitted_img_*.png``, which an older note lists too, is never written:
the real ``render_3dmm`` returns before saving it.)"""


def is_byproduct(name: str) -> bool:
    """Whether ``name`` is one of the PNGs the NeRF script leaves in its cache dir."""
    return name in BYPRODUCTS


def validate_character(name: str) -> str:
    r"""Return ``name`` if it can name a character folder, else raise ``InvalidInputError``.

    A character is one path component: not empty, no ``/`` or ``\\``, not ``.`` or ``..``, no
    leading dot (those names are nerfcache's own), no control characters, no surrounding
    spaces, at most 128 characters. Any script is fine: ``"绫波丽"`` is a valid name.
    """
    _check_component(name, field="character")
    return name


def _check_component(name: object, *, field: str) -> None:
    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"invalid {field} name {name!r}: {why}", field=field, value=name)

    if not isinstance(name, str):
        raise bad("it must be a string")
    if not name:
        raise bad("it is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise bad(f"it is longer than {MAX_NAME_LENGTH} characters")
    if "/" in name or "\\" in name:
        raise bad("it must be a single name, without '/' or '\\'")
    if name.startswith("."):
        raise bad("it must not start with '.'")
    if name != name.strip():
        raise bad("it must not start or end with white space")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise bad("it contains control characters")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise bad(f"it takes more than {MAX_NAME_BYTES} bytes in UTF-8, too long for a file name")


def character_dir(settings: Settings, character: str) -> Path:
    """Return ``{cache_root}/{character}`` after checking that it stays inside ``cache_root``.

    The folder need not exist. A symlink planted in its place that leads out of ``cache_root``
    is refused rather than followed.
    """
    validate_character(character)
    root = settings.cache_root
    path = root / character
    if not path.resolve().is_relative_to(root.resolve()):
        raise InvalidInputError(
            f"the folder of character {character!r} ({path}) leads outside cache_root ({root});"
            " remove the link or set NERFCACHE_CACHE_ROOT",
            field="character",
            value=character,
        )
    return path


def find_test_image(
    settings: Settings,
    character: str,
    test_image: Path | str | None = None,
    *,
    folder: Path | None = None,
) -> Path:
    """Return the portrait for ``character``, absolute.

    Looked for in this order: ``test_image`` if given, the ``characters`` registry, the first
    image (sorted) in ``{cache_root}/{character}/images/``, then in ``{cache_root}/{character}/``.

    Args:
        settings: where the registry and ``cache_root`` are.
        character: the character's name.
        test_image: the portrait, if the caller names one: it must be an existing file.
        folder: the character's folder when the caller has it already checked (a
            ``CharacterCache``'s ``path``); by default ``character_dir(settings, character)``.

    Raises:
        InvalidInputError: a bad character name.
        MissingFileError: no portrait was found, or ``test_image`` is not a file.

    """
    if test_image is not None:
        return _existing_file(Path(test_image), what="test image")
    if character in settings.characters:
        return _existing_file(settings.characters[character], what=f"test image of {character!r}")
    if folder is None:
        folder = character_dir(settings, character)
    for place in (folder / "images", folder):
        if place.is_dir():
            images = sorted(
                p
                for p in place.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not is_byproduct(p.name) and p.is_file()
            )
            if images:
                return images[0].absolute()
    raise MissingFileError(
        f"no test image for character {character!r}: put a .jpg or .png in {folder / 'images'},"
        " register it in settings.characters, or give the portrait (test_image=, or --image on"
        " the command line)",
        path=folder / "images",
    )


def resolve_model(settings: Settings, model_name: str) -> Path:
    """Return the network pickle ``{model_dir}/{model_name}``; the name must be a plain ``.pkl``."""
    _check_component(model_name, field="model")
    if not model_name.endswith(".pkl"):
        raise InvalidInputError(
            f"invalid model name {model_name!r}: it must be a .pkl file name",
            field="model",
            value=model_name,
        )
    path = settings.model_dir / model_name
    if not path.is_file():
        available = sorted(p.name for p in settings.model_dir.glob("*.pkl"))
        raise MissingFileError(
            f"model {model_name!r} not found in model_dir ({settings.model_dir});"
            f" available: {', '.join(available) or 'none'}",
            path=path,
        )
    return path


def resolve_audio(audio_path: Path | str) -> Path:
    """Return the audio file as an absolute path; it must be an existing regular file."""
    return _existing_file(Path(audio_path), what="audio file")


def _existing_file(path: Path, *, what: str) -> Path:
    if "\0" in str(path):
        raise InvalidInputError(f"{what} path {str(path)!r} contains a NUL byte", value=path)
    try:
        if path.is_file():
            return path.absolute()
        problem = "is not a regular file" if path.exists() else "does not exist"
    except OSError as error:  # a name too long for the filesystem, for one
        problem = f"cannot be read ({error.strerror})"
    raise MissingFileError(f"{what} {str(path)!r} {problem}", path=path)
