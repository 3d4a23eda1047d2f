"""The README's code samples run as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from siliconflow_video.testing import FakeSiliconFlow

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


async def test_readme_fake_server_sample(tmp_path: Path) -> None:
    """The 'Testing your code' sample passes as written."""
    [block] = [b for b in python_blocks() if "async def test_my_pipeline" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    async with FakeSiliconFlow(api_key="sk-test") as fake:
        await namespace["test_my_pipeline"](fake, tmp_path)
    assert list(tmp_path.glob("*.mp4"))


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def commands(text: str) -> list[list[str]]:
    """Each command of shell lines, split into words: ``&&`` chains are split, comments,
    ``echo``, ``set`` and ``cd`` are left out, and pip's ``--quiet`` is ignored."""
    found = []
    for line in text.splitlines():
        for part in line.split("&&"):
            words = [w for w in shlex.split(part, comments=True) if w != "--quiet"]
            if words[:2] == [".venv/bin/python", "-m"] and words[2:3] == ["pip"]:
                words = [".venv/bin/pip", *words[3:]]
            if words and words[0] not in ("echo", "set", "cd", "rm"):
                found.append(words)
    return found


def test_readme_commands_are_what_ci_runs() -> None:
    """The README's set-up, test and development commands are, parsed, the ones .ci/run
    runs, in the same order (CI adds only a pip upgrade, and PostgreSQL's server for the
    journal's tests when the machine lacks it)."""
    ci = [
        c
        for c in commands((README.parent / ".ci" / "run").read_text())
        if "--upgrade" not in c and c[0] not in ("if", "fi", "apt-get")
    ]
    setup, test, *_ = sh_blocks()
    [development] = [b for b in sh_blocks() if "ruff" in b]
    install = [c for c in commands(setup) if "siliconflow-video" not in c[0]]
    assert ci == install + commands(development)
    assert commands(test) == [ci[-1]] == [[".venv/bin/python", "-m", "pytest"]]


def test_readme_quickstart_runs_as_printed(tmp_path: Path) -> None:
    """The Quickstart sample runs as a script against the fake and saves the video."""
    [block] = [b for b in python_blocks() if "asyncio.run(main())" in b]
    fake = FakeSiliconFlow(api_key="sk-readme-test")
    fake.submit_defaults = {"run_seconds": 0.1, "videos": (20_000,)}
    with fake.run_in_thread():
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")},
            "SILICONFLOW_API_KEY": "sk-readme-test",
            "SILICONFLOW_BASE_URL": fake.base_url,
        }
        proc = subprocess.run(
            [sys.executable, "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    [rid] = fake.jobs
    assert (tmp_path / "videos" / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
