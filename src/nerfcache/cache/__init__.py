"""A character's cache of PTI and 3DMM results: writing it (``store``), managing it (``manage``).

Layout of ``{cache_root}/{character}`` (the folder the original launcher used)::

    G_PTI.pt w_PTI.pt bg_PTI.pt   the PTI group, published together
    fitted_coeffs.pt              the 3DMM fit, valid only with the PTI group it was fitted on
    images/ audio.wav ...         the user's own files: never moved, never deleted
    .nerfcache/manifest.json      what is published, for which fingerprint (written last)
    .nerfcache/runs/<run id>/     one private staging dir per run, seeded with hard links
    .nerfcache/generations/<key>/ stale caches set aside, restored by rename
    .nerfcache/quarantine/<...>/  files that did not check out

Correctness comes from private staging dirs and atomic renames; the file locks only keep cold
builds single-flight (DESIGN.md section 3).
"""

from __future__ import annotations

from nerfcache.cache.digests import digest_memo, file_sha256
from nerfcache.cache.inspection import CacheInfo, Finding, FindingLevel, Verification
from nerfcache.cache.layout import (
    CACHE_FILES,
    FIT_FILES,
    META_DIR,
    PTI_FILES,
    CacheStatus,
    Fingerprint,
    Manifest,
)
from nerfcache.cache.manage import Pruning, list_caches, prune
from nerfcache.cache.staging import Staging
from nerfcache.cache.store import CharacterCache, Snapshot

__all__ = [
    "CACHE_FILES",
    "FIT_FILES",
    "META_DIR",
    "PTI_FILES",
    "CacheInfo",
    "CacheStatus",
    "CharacterCache",
    "Finding",
    "FindingLevel",
    "Fingerprint",
    "Manifest",
    "Pruning",
    "Snapshot",
    "Staging",
    "Verification",
    "digest_memo",
    "file_sha256",
    "list_caches",
    "prune",
]
