"""The README's code samples run as printed."""

from __future__ import annotations

import re
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


def test_readme_commands_match_ci() -> None:
    """The README's test command is the one .ci/run runs."""
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in text
    assert ci.rstrip().endswith(".venv/bin/python -m pytest")
    assert "siliconflow-video demo" in text
