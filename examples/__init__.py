"""Examples of nerfcache in use (tested in CI)."""
