from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import nerfcache

MODULES = [
    "archive",
    "cache",
    "characters",
    "cli",
    "compat",
    "config",
    "delivery",
    "doctor",
    "errors",
    "generate",
    "generate_async",
    "gpus",
    "launch",
    "logs",
    "progress",
    "run",
    "testing",
    "workdir",
]


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(nerfcache) if not name.startswith("_")}
    public -= set(MODULES) | {"logger", "annotations", "testing", "pytest_plugin"}
    assert set(nerfcache.__all__) == public
    assert nerfcache.__all__ == sorted(nerfcache.__all__)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_declares_all(module: str) -> None:
    mod = importlib.import_module(f"nerfcache.{module}")
    assert mod.__all__, f"nerfcache.{module} exports nothing"
    for name in mod.__all__:
        assert hasattr(mod, name), f"nerfcache.{module}.__all__ names missing {name}"


def test_every_public_name_resolves_and_launch_plan_is_not_one() -> None:
    for name in nerfcache.__all__:
        value = getattr(nerfcache, name)
        assert getattr(value, "__name__", name) == name
    assert "LaunchPlan" not in nerfcache.__all__
    with pytest.raises(AttributeError, match="LaunchPlan"):
        nerfcache.LaunchPlan  # noqa: B018
    from nerfcache.characters import find_test_image, resolve_model, validate_character

    assert (nerfcache.find_test_image, nerfcache.resolve_model, nerfcache.validate_character) == (
        find_test_image,
        resolve_model,
        validate_character,
    )


def test_importing_loads_what_is_used_when_it_is_used(tmp_path) -> None:
    # `import nerfcache` costs about what loguru does; pydantic and the run machinery come with
    # the first name that needs them.
    code = (
        "import sys\n"
        "import nerfcache\n"
        "ours = ('nerfcache.', 'pydantic')\n"
        "mine = lambda: sorted(m for m in sys.modules if m.startswith(ours))\n"
        "assert mine() == [], mine()\n"
        "nerfcache.NerfCacheError\n"
        "assert mine() == ['nerfcache.errors'], mine()\n"
        "from nerfcache import generate_video\n"
        "assert 'nerfcache.generate' in mine() and 'pydantic' in mine(), mine()\n"
        "assert nerfcache.cache.CACHE_FILES, 'submodules are attributes, as before'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_importing_adds_no_log_sink_and_creates_nothing(tmp_path) -> None:
    code = (
        "from loguru import logger\n"
        "before = len(logger._core.handlers)\n"
        "import nerfcache, nerfcache.cli\n"
        "assert len(logger._core.handlers) == before, 'a sink was added'\n"
        "import os; assert os.listdir('.') == [], os.listdir('.')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_library_logging_is_silent_until_enabled(tmp_path) -> None:
    code = (
        "import os, pathlib\n"
        "from loguru import logger\n"
        "from nerfcache.launch import LaunchPlan\n"
        "from nerfcache.run import run_plan\n"
        "plan = LaunchPlan(argv=('true',), cwd=pathlib.Path('.'), env=dict(os.environ),\n"
        "                  script=pathlib.Path('true'), cache_capable=False)\n"
        "seen = []\n"
        "logger.add(seen.append)\n"
        "run_plan(plan)\n"
        "assert seen == [], seen\n"
        "logger.enable('nerfcache')\n"
        "run_plan(plan)\n"
        "assert any('exited with 0' in m for m in seen), seen\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
