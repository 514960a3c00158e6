"""A drop-in for the seed web app's launcher: same call, never raises, logs through ``logging``.

The web app nerfcache comes from (TFG_ui_NeRFFaceSpeech) calls
``generate_video(audio_path, character, output_path, model_name)`` from FastAPI background
threads and checks only the result's truth. Its launcher never raised: it logged why to the
root logger, which feeds the app's live log page, and returned False. ``make_generate_video``
makes a function that keeps that contract on top of nerfcache; the app's launcher module becomes::

    from nerfcache import make_generate_video
    from shared.config import MODEL_DIR, PROJECT_ROOT, get_character_test_image

    generate_video = make_generate_video(
        project_root=PROJECT_ROOT, model_dir=MODEL_DIR, test_image_lookup=get_character_test_image
    )

See docs/migrating.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from nerfcache.config import Settings
from nerfcache.errors import GenerationError, InvalidInputError, NerfCacheError
from nerfcache.generate import GenerationResult, generate_video
from nerfcache.launch import find_script
from nerfcache.run import LineClassifier

__all__ = ["LOGGER_NAME", "CompatLauncher", "make_generate_video"]

LOGGER_NAME = "nerfcache.compat"
"""The stdlib logger of every record a ``CompatLauncher`` writes; it propagates to the root."""

# The original launcher logged every line of the script at INFO, tqdm redraws included, unless
# the line named an error or a warning. run.py's classifier decides that (it puts progress at
# DEBUG for nerfcache's own log; here progress is INFO, as before).
_LINE_LEVELS = {"ERROR": logging.ERROR, "WARNING": logging.WARNING}
_log = logging.getLogger(LOGGER_NAME)


def make_generate_video(
    *,
    project_root: Path | str | None = None,
    model_dir: Path | str | None = None,
    test_image_lookup: Callable[[str], Path | str] | None = None,
    **fields: Any,
) -> CompatLauncher:
    """Return the original launcher's ``generate_video``, run by nerfcache.

    Args:
        project_root: the app's project root (``shared.config.PROJECT_ROOT``); unset, the
            ``Settings`` default (``NERFCACHE_PROJECT_ROOT``, ``.env``, else the nearest folder
            at or above the working directory holding ``NeRFFaceSpeech_Code``).
        model_dir: where ``model_name`` is looked up (``shared.config.MODEL_DIR``).
        test_image_lookup: the app's portrait lookup (``get_character_test_image``): called with
            the character, returns its portrait, raises ``ValueError`` for an unknown one.
            Unset, nerfcache's own lookup (the ``characters`` registry, then the character's
            folder).
        fields: any other ``Settings`` field, e.g. ``conda_python=``, ``timeout_s=``.

    Raises:
        TypeError: a keyword that is not a ``Settings`` field (a typo would otherwise be
            ignored). Nothing else: settings are read, and checked, on every call.

    """
    given = {"project_root": project_root, "model_dir": model_dir, **fields}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"make_generate_video() got unknown settings: {', '.join(unknown)}")
    settings = {name: value for name, value in given.items() if value is not None}
    return CompatLauncher(settings=settings, test_image_lookup=test_image_lookup)


@dataclasses.dataclass(frozen=True)
class CompatLauncher:
    """``generate_video(audio_path, character, output_path, model_name)`` as the app knew it.

    Call it with the original's four arguments (positional or keyword). It returns the run's
    ``GenerationResult`` when the script ran (truthy exactly when the video is at
    ``{output_path}/output_NeRFFaceSpeech.mp4``; falsy when the run failed or timed out) and
    ``False`` when nothing could run. It never raises an ``Exception``: every failure is logged
    at ERROR on the ``nerfcache.compat`` logger, with the reason.
    """

    settings: Mapping[str, Any]
    """Keywords for ``Settings``, which is built on every call (environment included)."""
    test_image_lookup: Callable[[str], Path | str] | None = None

    def __call__(
        self,
        audio_path: Path | str,
        character: str,
        output_path: Path | str,
        model_name: str,
    ) -> GenerationResult | Literal[False]:
        """Make the video; log what happens; return a truthy result exactly when it was made."""
        try:
            return self._generate(audio_path, character, output_path, model_name)
        except ValidationError as error:  # a bad NERFCACHE_* value or keyword
            _log.error("NeRF video for %r not made: %s", character, _invalid_settings(error))
        except GenerationError as error:  # the run timed out (its result says how far it got)
            _log.error("NeRF video for %r not made: %s", character, error)
            return error.result if error.result is not None else False
        except NerfCacheError as error:  # bad input or configuration: the message says which
            _log.error("NeRF video for %r not made: %s", character, error)
        # An OSError (a full disk) or a bug: the original caught every Exception around its
        # run, and the app's handler was never written for one. The traceback goes with it.
        except Exception as error:  # noqa: BLE001
            _log.exception(
                "NeRF video for %r not made: %s: %s", character, type(error).__name__, error
            )
        return False

    def _generate(
        self, audio_path: Path | str, character: str, output_path: Path | str, model_name: str
    ) -> GenerationResult:
        settings = Settings(**self.settings)
        _log.info(
            "NeRF video for %r: audio %s, model %s, into %s",
            character,
            audio_path,
            model_name,
            output_path,
        )
        test_image = self._test_image(character)
        _, cache_capable = find_script(settings)
        if not cache_capable:
            _log.warning(
                "cache-capable script not found at %s: using the stock script, cached through"
                " its --outdir",
                settings.cache_script,
            )
        result = generate_video(
            audio_path,
            character,
            output_path,
            model_name,
            settings=settings,
            test_image=test_image,
            on_line=_line_logger(),
        )
        _report(character, result)
        return result

    def _test_image(self, character: str) -> Path | str | None:
        if self.test_image_lookup is None:
            return None
        try:
            return self.test_image_lookup(character)
        except ValueError as error:  # the app's lookup: an unknown character
            raise InvalidInputError(str(error), field="character", value=character) from error


def _line_logger() -> Callable[[str], None]:
    """A fresh ``on_line`` for one run (the classifier follows tracebacks across lines)."""
    classifier = LineClassifier()

    def log_line(line: str) -> None:
        _log.log(_LINE_LEVELS.get(classifier.level(line), logging.INFO), "%s", line)

    return log_line


def _invalid_settings(error: ValidationError) -> str:
    problems = (
        f"{'.'.join(map(str, e['loc']))} (NERFCACHE_{str(e['loc'][0]).upper()}): {e['msg']}"
        for e in error.errors()
    )
    return "invalid nerfcache setting " + "; ".join(problems)


def _report(character: str, result: GenerationResult) -> None:
    if not result:
        last = result.log_tail[-1] if result.log_tail else "no output"
        _log.error(
            "NeRF video for %r not made: the script exited with %s; its last line: %s",
            character,
            result.returncode,
            last,
        )
        return
    if result.returncode != 0:
        _log.warning(
            "the NeRF script exited with %s after making the video: kept", result.returncode
        )
    _log.info(
        "NeRF video ready: %s (%s, %.1f s)",
        result.video_path,
        "cache hit" if result.cache_hit else f"cache {result.cache_status_before.value}, built",
        result.duration_s,
    )
