from __future__ import annotations

from nerfcache import (
    Fingerprint,
)
from tests.cache.helpers import (
    FP,
    OTHER,
)


def test_fingerprint_key_is_stable_and_distinct() -> None:
    assert FP.key == Fingerprint("i" * 64, "n" * 64, 0.7).key
    assert len({FP.key, OTHER.key, Fingerprint("i" * 64, "n" * 64, 0.5).key}) == 3
