from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock

from nerfcache import (
    CacheStatus,
    CharacterCache,
    ConfigurationError,
    GenerationCancelled,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
    MissingFileError,
    ProgressEvent,
    generate_video,
    warm,
)
from nerfcache.cache import CACHE_FILES, PTI_FILES
from nerfcache.testing import FakeProject, make_fake_project, write_png, write_wav
from tests.conftest import (
    lock_is_free,
    process_gone,
    published,
    run_workers,
    staging_left,
    tree,
    wait_until,
)

VIDEO = "output_NeRFFaceSpeech.mp4"


def generate(project: FakeProject, out: str | Path = "out", **kwargs):
    kwargs.setdefault("settings", project.settings)
    return generate_video(
        kwargs.pop("audio", project.audio),
        kwargs.pop("character", project.character),
        project.root / out,
        kwargs.pop("model_name", project.model_name),
        **kwargs,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every user file in a character folder (everything but nerfcache's own)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".nerfcache" not in p.parts and p.name not in CACHE_FILES
    }


# -- cold, warm, and what a call returns --


def test_cold_then_warm_skips_pti_and_fitting(nerf_project: FakeProject) -> None:
    first = generate(nerf_project, "out1")
    second = generate(nerf_project, "out2")

    assert first and second
    cold, warm = nerf_project.calls()
    assert cold.computed("pti") and cold.computed("fitting")
    assert warm.loaded("pti") and warm.loaded("fitting")
    assert (first.cache_hit, first.cache_status_before) == (False, CacheStatus.COLD)
    assert (second.cache_hit, second.cache_status_before) == (True, CacheStatus.WARM)
    assert first.published == (*PTI_FILES, "fitted_coeffs.pt")
    assert second.published == ()
    assert published(nerf_project) == set(CACHE_FILES)
    assert staging_left(nerf_project) == []


def test_result_fields(nerf_project: FakeProject) -> None:
    result = generate(nerf_project, "videos/one")
    out = nerf_project.root / "videos" / "one"
    assert result.ok is True and bool(result) is True
    assert result.returncode == 0
    assert result.video_path == out / VIDEO
    assert result.video_path.read_bytes().startswith(b"NERFCACHE FAKE VIDEO")
    assert result.output_dir == out
    assert result.cache_dir == nerf_project.settings.cache_root / "ayanami"
    assert result.script == nerf_project.settings.cache_script
    assert result.cache_capable is True
    assert result.duration_s > 0
    assert result.command[:2] == (
        str(nerf_project.settings.conda_python),
        str(nerf_project.settings.cache_script),
    )
    assert any("Processing frames: 100%" in line for line in result.log_tail)


def test_the_seed_call_works_unchanged(nerf_project: FakeProject, monkeypatch) -> None:
    """generate_video(audio_path=..., character=..., output_path=..., model_name=...)."""
    monkeypatch.setenv("NERFCACHE_PROJECT_ROOT", str(nerf_project.root))
    monkeypatch.setenv("NERFCACHE_EXTRA_ENV", json.dumps(nerf_project.settings.extra_env))
    from nerfcache import get_settings

    get_settings.cache_clear()
    try:
        success = generate_video(
            audio_path=str(nerf_project.audio),
            character="ayanami",
            output_path=str(nerf_project.root / "output1"),
            model_name="ffhq.pkl",
        )
    finally:
        get_settings.cache_clear()
    assert success
    assert (nerf_project.root / "output1" / VIDEO).is_file()


def test_script_runs_in_a_private_view_of_the_code_folder_with_the_conda_environment(
    nerf_project,
) -> None:
    result = generate(nerf_project)
    (call,) = nerf_project.calls()
    settings = nerf_project.settings
    cwd = Path(str(call.start["cwd"]))
    assert cwd.name == "workdir"
    assert cwd.parent.name == result.run_id  # inside the run's staging dir, gone with it
    assert not cwd.exists()
    assert str(call.start["path"]).startswith(str(settings.conda_env / "bin") + os.pathsep)
    assert call.start["pythonpath"] == str(cwd)
    assert call.option("network") == str(settings.model_dir / "ffhq.pkl")
    assert call.option("trunc") == "0.7"
    assert call.option("motion_guide_img_folder") == "frames"
    assert call.option("cache_dir") == call.option("outdir")


def test_unicode_character(nerf_project: FakeProject) -> None:
    nerf_project.add_character("绫波丽")
    assert generate(nerf_project, "a", character="绫波丽")
    assert generate(nerf_project, "b", character="绫波丽").cache_hit
    assert published(nerf_project, "绫波丽") == set(CACHE_FILES)


def test_a_new_video_replaces_an_old_one(nerf_project: FakeProject) -> None:
    out = nerf_project.root / "out"
    out.mkdir()
    (out / VIDEO).write_bytes(b"an old video")
    result = generate(nerf_project)
    assert result
    # The real script would skip ("The video already exist") if run in that folder: not here.
    assert "rendering" in nerf_project.calls()[0].phases
    assert (out / VIDEO).read_bytes().startswith(b"NERFCACHE FAKE VIDEO")


def test_a_video_is_copied_into_place_across_file_systems(nerf_project, monkeypatch) -> None:
    out = nerf_project.root / "out"
    out.mkdir()
    (out / VIDEO).write_bytes(b"an old video")
    rename = os.replace

    def no_renames_across(source, target) -> None:
        if Path(source).name == VIDEO:  # the staging dir is on another disk than the output
            raise OSError(18, "Invalid cross-device link")
        rename(source, target)

    monkeypatch.setattr(os, "replace", no_renames_across)
    result = generate(nerf_project)
    assert result
    assert (out / VIDEO).read_bytes().startswith(b"NERFCACHE FAKE VIDEO")
    assert sorted(p.name for p in out.iterdir()) == [VIDEO]  # no temporary file left


def test_real_mp4_with_ffmpeg(tmp_path: Path) -> None:
    project = make_fake_project(tmp_path / "p", real_video=True)
    result = generate(project)
    assert result
    assert result.video_path is not None
    assert result.video_path.read_bytes()[4:8] == b"ftyp"


# -- the stock script --


def test_stock_script_gets_no_cache_dir_and_still_caches(nerf_project, log_messages) -> None:
    nerf_project.use_stock_script_only()
    first = generate(nerf_project, "out1")
    second = generate(nerf_project, "out2")

    assert first and second
    assert not first.cache_capable
    assert first.script == nerf_project.settings.script
    cold, warm = nerf_project.calls()
    assert cold.start["variant"] == "stock"
    assert not any(a.startswith("--cache_dir") for a in cold.argv + warm.argv)
    assert cold.computed("pti") and warm.loaded("pti") and warm.loaded("fitting")
    assert second.cache_hit
    assert any(
        level == "WARNING" and "cache-capable script not found" in m for level, m in log_messages
    )


# -- fingerprint: image and model changes --


def test_image_change_rebuilds_and_switching_back_restores(nerf_project: FakeProject) -> None:
    portrait = nerf_project.character_dir() / "images" / "portrait.png"
    old_sha = sha256(portrait)
    generate(nerf_project, "1")

    write_png(portrait, (10, 200, 10))
    new_sha = sha256(portrait)
    changed = generate(nerf_project, "2")
    assert changed.cache_status_before is CacheStatus.STALE
    assert not changed.cache_hit
    assert nerf_project.calls()[-1].computed("pti")
    assert nerf_project.calls()[-1].phases["pti"]["image_sha256"] == new_sha

    write_png(portrait, (200, 150, 120))  # the original portrait again
    assert sha256(portrait) == old_sha
    back = generate(nerf_project, "3")
    assert back.cache_status_before is CacheStatus.STALE
    assert back.cache_hit  # restored by rename, no rebuild
    last = nerf_project.calls()[-1]
    assert last.loaded("pti") and last.loaded("fitting")
    assert last.phases["pti"]["image_sha256"] == old_sha


def test_model_change_rebuilds_and_switching_back_restores(nerf_project: FakeProject) -> None:
    (nerf_project.settings.model_dir / "celeba.pkl").write_bytes(b"another network")
    generate(nerf_project, "1")
    other = generate(nerf_project, "2", model_name="celeba.pkl")
    assert not other.cache_hit
    assert nerf_project.calls()[-1].computed("pti")
    back = generate(nerf_project, "3")
    assert back.cache_hit
    assert nerf_project.calls()[-1].loaded("pti")
    assert nerf_project.calls()[-1].phases["pti"]["network_sha256"] == sha256(
        nerf_project.settings.model_dir / "ffhq.pkl"
    )


def test_only_the_configured_number_of_generations_is_kept(nerf_project) -> None:
    portrait = nerf_project.character_dir() / "images" / "portrait.png"
    for shade in range(4):
        write_png(portrait, (shade, shade, shade))
        generate(nerf_project, str(shade))
    generations = nerf_project.character_dir() / ".nerfcache" / "generations"
    assert len(list(generations.iterdir())) == nerf_project.settings.keep_generations


@pytest.mark.parametrize("keep", [1, 2])
def test_switching_back_restores_even_the_oldest_kept_generation(nerf_project, keep: int) -> None:
    settings = nerf_project.settings.model_copy(update={"keep_generations": keep})
    portrait = nerf_project.character_dir() / "images" / "portrait.png"
    shades = [(1, 1, 1), (2, 2, 2), (3, 3, 3)][: keep + 1]
    for shade in shades:
        write_png(portrait, shade)
        generate(nerf_project, str(shade), settings=settings)
    write_png(portrait, shades[0])  # back to the first, now the oldest kept
    assert generate(nerf_project, "back", settings=settings).cache_hit
    assert sum(c.computed("pti") for c in nerf_project.calls()) == len(shades)


def test_a_portrait_replaced_while_the_run_waited_is_refused(nerf_project: FakeProject) -> None:
    generate(nerf_project, "1")
    portrait = nerf_project.character_dir() / "images" / "portrait.png"

    settings = nerf_project.settings.model_copy(update={"gpus": "0"})
    slot = settings.state_dir / "gpu-slots" / "gpu0-slot0.lock"
    events: list[ProgressEvent] = []
    errors: list[BaseException] = []
    held = FileLock(slot)
    held.acquire()

    def run() -> None:
        try:
            generate(nerf_project, "2", settings=settings, on_progress=events.append)
        except InvalidInputError as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert wait_until(lambda: any(e.stage == "queued" for e in events))
        write_png(portrait, (0, 255, 0))  # the user replaces the portrait meanwhile
    finally:
        held.release()
    thread.join(30)
    assert len(errors) == 1
    assert "changed while this run waited" in str(errors[0])
    assert len(nerf_project.calls()) == 1  # nothing was run on the new face under the old hash


def test_an_error_in_a_callback_still_keeps_finished_pti_work(nerf_project: FakeProject) -> None:
    def on_line(line: str) -> None:
        if line == "start rigid fitting":  # PTI is saved; the fit has begun
            raise RuntimeError("the caller's callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        generate(
            nerf_project, settings=nerf_project.with_env(FAKE_NERF_FIT_S="60"), on_line=on_line
        )
    assert published(nerf_project) == set(PTI_FILES)
    assert staging_left(nerf_project) == []
    (call,) = nerf_project.calls()
    assert wait_until(lambda: process_gone(call.pid))


def test_a_changed_trunc_is_another_cache(nerf_project: FakeProject) -> None:
    generate(nerf_project, "1")
    other = nerf_project.settings.model_copy(update={"trunc": 0.5})
    result = generate(nerf_project, "2", settings=other)
    assert result.cache_status_before is CacheStatus.STALE
    assert nerf_project.calls()[-1].computed("pti")


# -- legacy, partial, crashes --


def test_legacy_cache_is_adopted_with_a_warning(nerf_project, log_messages) -> None:
    generate(nerf_project, "1")
    # What the original launcher left: the files, no manifest.
    (nerf_project.character_dir() / ".nerfcache" / "manifest.json").unlink()
    result = generate(nerf_project, "2")
    assert result.cache_status_before is CacheStatus.LEGACY
    assert result.cache_hit
    assert nerf_project.calls()[-1].loaded("pti")
    assert any(level == "WARNING" and "original launcher" in m for level, m in log_messages)


def test_truncated_legacy_file_is_quarantined_and_rebuilt(nerf_project) -> None:
    generate(nerf_project, "1")
    folder = nerf_project.character_dir()
    (folder / ".nerfcache" / "manifest.json").unlink()
    data = (folder / "w_PTI.pt").read_bytes()
    (folder / "w_PTI.pt").write_bytes(data[: len(data) // 2])  # an old crash mid-torch.save

    result = generate(nerf_project, "2")
    assert result
    assert result.cache_status_before is CacheStatus.PARTIAL
    assert nerf_project.calls()[-1].computed("pti")
    quarantined = list((folder / ".nerfcache" / "quarantine").rglob("w_PTI.pt"))
    assert len(quarantined) == 1 and quarantined[0].stat().st_size == len(data) // 2
    assert CharacterCache(nerf_project.settings, "ayanami").status() is CacheStatus.WARM


@pytest.mark.parametrize("victim", ["G_PTI.pt", "w_PTI.pt", "bg_PTI.pt", "fitted_coeffs.pt"])
def test_killed_while_saving_then_a_clean_rebuild(nerf_project, victim: str) -> None:
    crashed = generate(
        nerf_project, "1", settings=nerf_project.with_env(FAKE_NERF_KILL_DURING_SAVE=victim)
    )
    assert not crashed
    assert crashed.returncode == -9
    # Nothing truncated was published; a complete PTI group was (if the kill came later).
    expected = set(PTI_FILES) if victim == "fitted_coeffs.pt" else set()
    assert published(nerf_project) == expected
    assert staging_left(nerf_project) == []

    result = generate(nerf_project, "2")
    assert result
    last = nerf_project.calls()[-1]
    assert last.loaded("pti") == (victim == "fitted_coeffs.pt")
    assert last.computed("fitting")
    assert published(nerf_project) == set(CACHE_FILES)


def test_a_failure_after_pti_keeps_the_pti_group(nerf_project: FakeProject) -> None:
    failed = generate(
        nerf_project, "1", settings=nerf_project.with_env(FAKE_NERF_FAIL_AT="fitting")
    )
    assert not failed and failed.returncode == 1
    assert any("simulated failure in fitting" in line for line in failed.log_tail)
    assert failed.published == PTI_FILES
    cache = CharacterCache(nerf_project.settings, "ayanami")
    assert cache.status() is CacheStatus.PTI_ONLY

    result = generate(nerf_project, "2")
    assert result.cache_status_before is CacheStatus.PTI_ONLY
    assert not result.cache_hit
    last = nerf_project.calls()[-1]
    assert last.loaded("pti") and last.computed("fitting")
    assert cache.status() is CacheStatus.WARM


def test_a_failure_in_rendering_keeps_the_whole_cache(nerf_project: FakeProject) -> None:
    failed = generate(
        nerf_project, "1", settings=nerf_project.with_env(FAKE_NERF_FAIL_AT="rendering")
    )
    assert not failed
    assert published(nerf_project) == set(CACHE_FILES)
    assert generate(nerf_project, "2").cache_hit


def test_exit_zero_without_a_video_is_a_failure(nerf_project: FakeProject) -> None:
    out = nerf_project.root / "out"
    out.mkdir()
    (out / VIDEO).write_bytes(b"an old video")
    settings = nerf_project.with_env(FAKE_NERF_NO_VIDEO="1")
    result = generate(nerf_project, settings=settings)
    assert not result
    assert result.returncode == 0
    assert result.video_path is None
    assert (out / VIDEO).read_bytes() == b"an old video"  # kept, and not reported as new
    with pytest.raises(GenerationError, match="made no video") as info:
        generate(nerf_project, settings=settings, check=True)
    assert info.value.result is not None and info.value.result.returncode == 0


# -- where the video goes --


def _squatter(project: FakeProject) -> Path:
    (project.root / "out" / VIDEO).mkdir(parents=True)
    return project.root / "out"


OUTPUT_PROBLEMS = {
    "a file": (lambda p: write_png(p.root / "out.png", (1, 1, 1)), "exists and is not a folder"),
    "under a file": (
        lambda p: write_png(p.root / "out.png", (1, 1, 1)) / "videos",
        "cannot be created: .* is a file",
    ),
    "a folder in the video's place": (_squatter, f"holds a folder named {VIDEO}"),
    "in a character's .nerfcache": (
        lambda p: p.character_dir() / ".nerfcache" / "videos",
        "inside nerfcache's own folder",
    ),
    "in state_dir": (lambda p: p.settings.state_dir / "videos", "inside nerfcache's own folder"),
}


@pytest.mark.parametrize(("make", "says"), OUTPUT_PROBLEMS.values(), ids=OUTPUT_PROBLEMS.keys())
def test_an_output_path_that_cannot_take_the_video_is_refused_before_the_run(
    nerf_project: FakeProject, tmp_path: Path, make, says: str
) -> None:
    out = make(nerf_project)
    before = tree(tmp_path)
    with pytest.raises(InvalidInputError, match=says) as info:
        generate(nerf_project, out)
    assert info.value.field == "output_path"
    assert str(out) in str(info.value)
    assert nerf_project.calls() == []
    assert tree(tmp_path) == before


def test_an_unwritable_output_folder_is_refused_before_the_run(
    nerf_project: FakeProject, tmp_path: Path
) -> None:
    read_only = tmp_path / "mount"
    read_only.mkdir()
    out = read_only / "videos"
    # A read-only mount (root writes through any file mode): the command in a mount namespace.
    command = [
        "unshare", "-m", "sh", "-c", 'mount --bind -o ro "$1" "$1" && shift && exec "$@"', "sh",
        str(read_only), sys.executable, "-m", "nerfcache", "--project-root",
        str(nerf_project.root), "generate", str(nerf_project.audio), "ayanami", str(out),
        "--model", "ffhq.pkl",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"output_path '{out}' cannot be created: '{read_only}' is not writable" in done.stderr
    assert nerf_project.calls() == []


def test_a_video_that_cannot_be_delivered_after_the_run_is_kept(
    nerf_project: FakeProject,
) -> None:
    out = nerf_project.root / "out"

    def take_the_folder_away(line: str) -> None:
        if line.startswith("video processing"):  # the run is past every check of its inputs
            out.rmdir()
            out.write_text("someone put a file here")

    out.mkdir()
    result = generate(nerf_project, out, on_line=take_the_folder_away)
    assert not result
    assert result.video_path is None
    assert result.kept_video is not None
    assert result.kept_video.parent == nerf_project.settings.state_dir / "undelivered"
    assert result.kept_video.stat().st_size > 0
    assert result.error is not None
    assert f"could not be put in {out}" in result.error
    assert f"it is kept at {result.kept_video}" in result.error
    assert set(result.published) == set(CACHE_FILES)  # the run's cache work is kept too
    assert published(nerf_project) == set(CACHE_FILES)
    assert staging_left(nerf_project) == []


# -- concurrency --


def test_eight_threads_on_a_cold_character_run_pti_once(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_PTI_S="0.3")
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda i: generate(nerf_project, f"t{i}", settings=settings), range(8))
        )
    assert all(results)
    calls = nerf_project.calls()
    assert len(calls) == 8
    assert sum(c.computed("pti") for c in calls) == 1
    assert sum(c.computed("fitting") for c in calls) == 1
    assert sum(r.cache_hit for r in results) == 7
    assert staging_left(nerf_project) == []
    assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / "build.lock")


WORKER = """
import json, sys
from nerfcache import generate_video
result = generate_video(sys.argv[1], "ayanami", sys.argv[2], "ffhq.pkl")
print(json.dumps({"ok": result.ok, "hit": result.cache_hit}))
"""


def test_four_processes_on_a_cold_character_run_pti_once(nerf_project: FakeProject) -> None:
    slow = {**nerf_project.settings.extra_env, "FAKE_NERF_PTI_S": "0.3"}
    outputs = run_workers(nerf_project, WORKER, 4, extra_env=json.dumps(slow))
    assert all(o["ok"] for o in outputs)
    assert sum(o["hit"] for o in outputs) == 3
    assert sum(c.computed("pti") for c in nerf_project.calls()) == 1


def test_warm_runs_of_one_character_run_side_by_side(nerf_project: FakeProject, tmp_path) -> None:
    generate(nerf_project, "warmup")
    # Each run waits in rendering until all four are rendering at once: a lock serialising
    # warm runs would fail this, and a shared cache dir would make them clobber each other.
    settings = nerf_project.with_env(FAKE_NERF_BARRIER=f"{tmp_path / 'barrier'}:4")
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda i: generate(nerf_project, f"w{i}", settings=settings), range(4))
        )
    assert all(r.cache_hit for r in results), [r.log_tail[-3:] for r in results]
    assert all(results)
    assert sum(c.computed("pti") for c in nerf_project.calls()) == 1
    assert len({call.option("cache_dir") for call in nerf_project.calls()}) == 5


def test_two_cold_characters_build_in_parallel(nerf_project: FakeProject, tmp_path) -> None:
    nerf_project.add_character("rei", color=(1, 2, 3))
    settings = nerf_project.with_env(FAKE_NERF_BARRIER=f"{tmp_path / 'barrier'}:2")
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda c: generate(nerf_project, c, character=c, settings=settings),
                ["ayanami", "rei"],
            )
        )
    assert all(results)
    assert sum(c.computed("pti") for c in nerf_project.calls()) == 2


def test_two_cold_builds_on_two_gpu_slots_keep_pti_s_files_apart(
    nerf_project: FakeProject, tmp_path
) -> None:
    nerf_project.add_character("rei", color=(1, 2, 3))
    code = nerf_project.settings.nerf_code_dir
    before = tree(code)
    # The fake waits inside PTI until both runs are there, as two GPUs would have them: PTI
    # writes ./embeddings and ./checkpoints while it tunes and deletes them at its end.
    settings = nerf_project.with_env(FAKE_NERF_PTI_BARRIER=f"{tmp_path / 'pti'}:2").model_copy(
        update={"gpus": "0,1"}
    )
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda c: generate(nerf_project, c, character=c, settings=settings),
                ["ayanami", "rei"],
            )
        )
    assert all(results), [r.log_tail[-5:] for r in results]
    assert {r.gpu for r in results} == {"0", "1"}
    assert published(nerf_project, "ayanami") == published(nerf_project, "rei") == set(CACHE_FILES)
    assert sum(c.computed("pti") for c in nerf_project.calls()) == 2
    assert tree(code) == before  # the code folder is never written to


def test_a_video_made_before_the_clean_up_failed_is_delivered(
    nerf_project: FakeProject, log_messages
) -> None:
    settings = nerf_project.with_env(FAKE_NERF_FAIL_AT="cleanup")
    result = generate(nerf_project, settings=settings, check=True)
    assert result
    assert result.returncode == 1
    assert result.video_path == nerf_project.root / "out" / VIDEO
    assert result.video_path.stat().st_size > 0
    assert any(
        level == "WARNING" and "exited with 1 after making its video" in message
        for level, message in log_messages
    )


# -- timeout and cancel --


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_timeout_that_is_no_limit_is_refused(nerf_project: FakeProject, timeout: float) -> None:
    with pytest.raises(InvalidInputError, match="timeout must be a positive number") as info:
        generate(nerf_project, timeout=timeout)
    assert info.value.field == "timeout"
    assert nerf_project.calls() == []


def test_timeout_kills_the_process_group(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_PTI_S="60", FAKE_NERF_SPAWN_CHILD="1")
    with pytest.raises(GenerationTimeout, match="timeout") as info:
        generate(nerf_project, settings=settings, timeout=1)
    assert isinstance(info.value, TimeoutError)
    assert info.value.result is not None and not info.value.result
    (call,) = nerf_project.calls()
    child = call.start["child_pid"]
    assert isinstance(child, int)
    assert wait_until(lambda: process_gone(call.pid) and process_gone(child))
    assert published(nerf_project) == set()
    assert staging_left(nerf_project) == []
    assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / "build.lock")


def test_settings_timeout_applies(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_RENDER_S="60").model_copy(update={"timeout_s": 1})
    with pytest.raises(GenerationTimeout):
        generate(nerf_project, settings=settings)


def test_cancel_from_another_thread(nerf_project: FakeProject) -> None:
    cancel = threading.Event()

    def on_line(line: str) -> None:
        if line == "start rigid fitting":  # PTI is saved, the fit has begun
            cancel.set()

    settings = nerf_project.with_env(FAKE_NERF_FIT_S="60")
    with pytest.raises(GenerationCancelled) as info:
        generate(nerf_project, settings=settings, cancel=cancel, on_line=on_line)
    assert isinstance(info.value, GenerationError)
    assert info.value.result is not None
    assert not info.value.result
    assert info.value.result.returncode is None
    # PTI finished before the cancel: kept, fifteen GPU minutes not thrown away.
    assert published(nerf_project) == set(PTI_FILES)
    assert staging_left(nerf_project) == []
    (call,) = nerf_project.calls()
    assert wait_until(lambda: process_gone(call.pid))


# -- output --


def test_huge_and_non_utf8_output(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_SPAM_MB="20", FAKE_NERF_BAD_BYTES="1")
    result = generate(nerf_project, settings=settings)
    assert result
    assert any("\ufffd" in line for line in result.log_tail)
    assert len(result.log_tail) <= 40
    assert all(len(line) <= 4096 + len(" [line truncated]") for line in result.log_tail)


# -- hostile names --


def test_shell_metacharacters_in_the_audio_name_run_nothing(nerf_project, tmp_path) -> None:
    audio = write_wav(tmp_path / "uploads" / "a b;touch PWNED;.wav")
    result = generate(nerf_project, audio=audio)
    assert result
    assert list(tmp_path.rglob("PWNED")) == []
    assert not (Path.cwd() / "PWNED").exists()


def test_spaces_and_metacharacters_in_cache_root_and_character(tmp_path: Path) -> None:
    project = make_fake_project(tmp_path / "my project $HOME")
    name = "a b;touch PWNED;"
    project.add_character(name)
    assert generate(project, "out", character=name)
    assert generate(project, "out2", character=name).cache_hit
    assert list(tmp_path.rglob("PWNED")) == []


def test_user_files_survive_everything(nerf_project: FakeProject) -> None:
    folder = nerf_project.character_dir()
    (folder / "notes.txt").write_text("mine")
    # A second picture of the user's, sorted after the portrait: never moved, never the portrait.
    (folder / "images" / "sketch.jpg").write_bytes(b"not really a jpeg")
    before = snapshot(folder)
    portrait = folder / "images" / "portrait.png"

    generate(nerf_project, "1")  # cold
    generate(nerf_project, "2")  # warm
    generate(nerf_project, "3", settings=nerf_project.with_env(FAKE_NERF_FAIL_AT="fitting"))
    (folder / ".nerfcache" / "manifest.json").unlink()  # partial without manifest
    generate(nerf_project, "4")
    original = portrait.read_bytes()
    write_png(portrait, (0, 0, 0))  # stale
    generate(nerf_project, "5")
    portrait.write_bytes(original)  # restore
    generate(nerf_project, "6", settings=nerf_project.with_env(FAKE_NERF_KILL_DURING_SAVE="x"))

    assert snapshot(folder) == before


def test_a_script_that_saves_over_its_inputs_leaves_the_user_s_files_as_they_were(
    nerf_project: FakeProject, tmp_path: Path
) -> None:
    audio = write_wav(tmp_path / "uploads" / "speech.wav")
    portrait = nerf_project.character_dir() / "images" / "portrait.png"
    mine = {path: path.read_bytes() for path in (audio, portrait)}
    assert generate(nerf_project, "cold", audio=audio)
    cache = {name: sha256(nerf_project.character_dir() / name) for name in CACHE_FILES}
    rewrites = nerf_project.with_env(FAKE_NERF_OVERWRITE_INPUTS=1)

    again = generate(nerf_project, "warm", audio=audio, settings=rewrites)
    assert again.cache_hit
    assert again  # the video is made all the same
    assert {path: path.read_bytes() for path in mine} == mine
    # The cache the run used is untouched; its copy of the portrait was written over, so it
    # cannot say which face it fitted: nothing is published from it.
    assert again.published == ()
    assert {name: sha256(nerf_project.character_dir() / name) for name in CACHE_FILES} == cache

    nerf_project.add_character("kaworu")
    kaworu = nerf_project.character_dir("kaworu") / "images" / "portrait.png"
    theirs = kaworu.read_bytes()
    cold = generate(nerf_project, "k", audio=audio, character="kaworu", settings=rewrites)
    assert cold
    assert not cold.published
    assert kaworu.read_bytes() == theirs
    assert {path: path.read_bytes() for path in mine} == mine
    overwritten = [
        json.loads(line)
        for line in nerf_project.log.read_text(encoding="utf-8").splitlines()
        if '"overwrote"' in line
    ]
    assert len(overwritten) == 4  # the fake did write over both inputs, in both runs


def test_the_character_name_is_checked_once_a_request(nerf_project: FakeProject, monkeypatch):
    import nerfcache.characters

    checked: list[str] = []
    check = nerfcache.characters.validate_character

    def counting(name: str) -> str:
        checked.append(name)
        return check(name)

    monkeypatch.setattr(nerfcache.characters, "validate_character", counting)
    assert generate(nerf_project, "1")
    assert checked == [nerf_project.character]
    checked.clear()
    nerf_project.add_character("kaworu")
    assert warm("kaworu", nerf_project.model_name, settings=nerf_project.settings) is (
        CacheStatus.COLD
    )
    assert checked == ["kaworu"]


# -- bad input leaves every file as it was --


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"character": "../etc"}, InvalidInputError, "invalid character name"),
        ({"character": "nobody"}, MissingFileError, "no test image"),
        ({"model_name": "../x.pkl"}, InvalidInputError, "invalid model name"),
        ({"model_name": "missing.pkl"}, MissingFileError, "not found in model_dir"),
        ({"audio": "/nonexistent.wav"}, MissingFileError, "audio file"),
        ({"test_image": "/nonexistent.png"}, MissingFileError, "test image"),
    ],
)
def test_bad_input_is_a_clear_error_and_touches_nothing(
    nerf_project, change, error, message
) -> None:
    before = sorted(nerf_project.root.rglob("*"))
    with pytest.raises(error, match=message):
        generate(nerf_project, **change)
    assert sorted(nerf_project.root.rglob("*")) == before
    assert nerf_project.calls() == []


@pytest.mark.parametrize(
    ("setting", "remove"),
    [
        ("conda_python", lambda s: s.conda_python.unlink()),
        ("script", lambda s: (s.cache_script.unlink(), s.script.unlink())),
        ("nerf_code_dir", lambda s: s.nerf_code_dir.rename(s.project_root / "elsewhere")),
    ],
)
def test_missing_installation_names_the_setting(nerf_project, setting, remove) -> None:
    remove(nerf_project.settings)
    with pytest.raises(ConfigurationError, match=f"NERFCACHE_{setting.upper()}") as info:
        generate(nerf_project)
    assert info.value.setting == setting
    assert not (nerf_project.character_dir() / ".nerfcache").exists()


def test_a_conda_python_that_cannot_run_names_the_setting(nerf_project) -> None:
    nerf_project.settings.conda_python.chmod(0o644)
    with pytest.raises(ConfigurationError, match="NERFCACHE_CONDA_PYTHON"):
        generate(nerf_project)
    assert staging_left(nerf_project) == []
    assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / "build.lock")


def test_output_path_that_is_a_file(nerf_project: FakeProject) -> None:
    (nerf_project.root / "taken").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        generate(nerf_project, "taken")


def test_explicit_test_image(nerf_project: FakeProject, tmp_path) -> None:
    image = write_png(tmp_path / "someone else.png", (5, 5, 5))
    assert generate(nerf_project, test_image=image)
    assert nerf_project.calls()[0].phases["pti"]["image_sha256"] == sha256(image)
