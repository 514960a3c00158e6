from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from nerfcache import (
    CacheBusyError,
    ConfigurationError,
    GenerationCancelled,
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
        (GenerationCancelled("cancelled while waiting"), RuntimeError),
        (CacheBusyError("in use by 2 running generation(s)", character="rei"), RuntimeError),
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


def test_a_busy_cache_is_no_generation_error() -> None:
    assert not issubclass(CacheBusyError, GenerationError)
    assert CacheBusyError("busy", character="rei").character == "rei"
