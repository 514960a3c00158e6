"""A silent WAV clip, standard library only: ``warm``'s input, and the tests' audio."""

from __future__ import annotations

import wave
from pathlib import Path

__all__ = ["write_wav"]


def write_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """Write a silent mono 16-bit WAV (standard library only); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(seconds * rate))
    return path
