"""The launcher the seed document describes, as the baseline of the single-flight benchmark.

Same command as nerfcache's, but the way the seed's change builds it: ``--outdir`` is the
caller's output folder and ``--cache_dir`` the character folder itself, shared by every run of
that character, with no staging, no lock, no check of what the script leaves there. Not for use:
concurrent calls for a cold character all run PTI, and race on the byproducts the cache-capable
script writes into its cache dir on every run (DESIGN.md section 2).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from nerfcache import Settings
from nerfcache.characters import find_test_image

__all__ = ["generate_video"]

VIDEO_NAME = "output_NeRFFaceSpeech.mp4"


def generate_video(
    audio_path: Path | str,
    character: str,
    output_path: Path | str,
    model_name: str,
    *,
    settings: Settings,
) -> bool:
    """Run the NeRF script the seed's way; True if the video exists afterwards."""
    # The seed: cache_dir = PROJECT_ROOT / "assets" / "charactor" / character, resolved, created.
    cache_dir = (settings.cache_root / character).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    script = settings.cache_script if settings.cache_script.exists() else settings.script
    test_img = find_test_image(settings, character)  # the app's get_character_test_image
    cmd = [
        str(settings.conda_python),
        str(script),
        f"--outdir={output_path}",
        "--trunc=0.7",
        f"--network={settings.model_dir / model_name}",
        f"--test_data={audio_path}",
        f"--test_img={test_img}",
        "--motion_guide_img_folder=frames",
        f"--cache_dir={cache_dir}",
    ]
    env = dict(os.environ)
    env["PATH"] = f"{settings.conda_env / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(settings.nerf_code_dir)
    env.update(
        settings.extra_env
    )  # the fake script's knobs (phase times, its log), as for nerfcache
    done = subprocess.run(
        cmd,
        cwd=settings.nerf_code_dir,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    return done.returncode == 0 and (Path(output_path) / VIDEO_NAME).exists()
