from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from nerfcache import (
    ConfigurationError,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
    MissingFileError,
    NerfCacheError,
)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (InvalidInputError("bad", field="character", value="../x"), ValueError),
        (MissingFileError("gone", path=Path("/a")), FileNotFoundError),
        (ConfigurationError("set it", setting="conda_python", path=Path("/p")), FileNotFoundError),
        (GenerationError("failed"), RuntimeError),
        (GenerationTimeout("slow"), TimeoutError),
    ],
)
def test_errors_are_builtins_too_and_pickle_with_their_context(error, builtin) -> None:
    assert isinstance(error, NerfCacheError)
    assert isinstance(error, builtin)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def test_timeout_is_a_generation_error() -> None:
    assert issubclass(GenerationTimeout, GenerationError)
