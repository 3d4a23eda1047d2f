"""Every code block of README.md runs as printed, whatever blocks it holds.

How each kind of block is run:

- ``python``, a whole script (it runs its own loop, ``asyncio.run(...)``): ``python -c``
  in an empty folder, with ``SILICONFLOW_API_KEY`` and ``SILICONFLOW_BASE_URL`` naming a
  ``FakeSiliconFlow`` (a real server on loopback).
- ``python`` with a top-level ``await``, a fragment of an ``async def``: run as
  ``python -m asyncio`` would, in an empty folder, with the same environment. The only
  names it may use without defining them are ``ids`` (requestIds the fake knows) and
  ``client`` (an open ``AsyncClient``), which the README says surround it.
- ``python`` defining ``test_*`` functions: a fresh project, a folder with only that file
  and the configuration the README states next to it (a ``toml`` block, or the words
  ``asyncio_mode = "auto"``), run by pytest in a subprocess. A name it uses without
  importing it (``FakeSiliconFlow``, ``create_app`` from ``examples/fastapi_app.py``,
  copied in) is imported at its top.
- ``sh``: every command, in order, in one ``bash -e`` session, in an empty folder whose
  ``.venv`` is this test's virtualenv and with the package's commands on ``PATH`` (as
  after the README's install); ``SILICONFLOW_BASE_URL`` names the fake, whose key is the
  one the README exports, and the ids the commands name (``ID1``, ``ID...``) are its jobs;
  ``prompts.jsonl`` holds one line of the format the README describes. Not run: installs
  (they need the network: the extras they name are checked against pyproject.toml), the
  commands ``.ci/run`` runs itself (checked to be CI's, in order), and the benchmarks
  (minutes of work: checked to take the option shown).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from siliconflow_video import AsyncClient
from siliconflow_video._naming import default_name
from siliconflow_video.testing import FakeSiliconFlow

from . import _postgres, _seaweed
from ._seaweed import BUCKET
from .test_s3_batch import aws_env, object_bytes

# The fixtures of a real PostgreSQL (tests/_postgres.py), used by name.
postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
KEY = "sk-readme-test"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    section: str  # the text from the section's heading to the block

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def blocks(lang: str | None = None) -> list[Block]:
    text = README.read_text()
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        before = text[: match.start()]
        heading = max(before.rfind("\n## "), 0)
        found.append(
            Block(
                match.group(1),
                match.group(2),
                before.count("\n") + 2,
                before[heading:],
            )
        )
    return [b for b in found if lang is None or b.lang == lang]


def python_blocks() -> list[Block]:
    return blocks("python")


def sh_blocks() -> list[str]:
    return [b.text for b in blocks("sh")]


def free_names(source: str) -> set[str]:
    """The names ``source`` reads that it never binds (nor are builtins)."""
    tree = ast.parse(source)
    bound: set[str] = set()
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound - set(dir(builtins))


def is_fragment(block: Block) -> bool:
    code = compile(block.text, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return bool(code.co_flags & inspect.CO_COROUTINE)


def defines_tests(block: Block) -> bool:
    return bool(re.search(r"^(async )?def test_", block.text, flags=re.M))


def fake_env(fake: FakeSiliconFlow, key: str = KEY) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SILICONFLOW_", "PYTEST_"))},
        "SILICONFLOW_API_KEY": key,
        "SILICONFLOW_BASE_URL": fake.base_url,
    }


def quick(fake: FakeSiliconFlow) -> FakeSiliconFlow:
    fake.submit_defaults = {"run_seconds": 0.1, "videos": (20_000,)}
    return fake


def s3_env(request: pytest.FixtureRequest, text: str) -> dict[str, str]:
    """The standard AWS variables naming the session's SeaweedFS, for a block that writes
    to ``s3://`` (the README says they are set); nothing for one that does not."""
    if "s3://" not in text:
        return {}
    seaweed = _seaweed.shared(request)
    return {k: v for k, v in aws_env(seaweed).items() if k.startswith("AWS_")}


def s3_keys(text: str) -> list[str]:
    """The ``s3://BUCKET/PREFIX/`` destinations a block names, as key prefixes."""
    found = re.findall(rf"s3://{BUCKET}/([\w./-]*)", text)
    return sorted({p if p.endswith("/") or not p else p + "/" for p in found})


def assert_objects(
    request: pytest.FixtureRequest, text: str, fake: FakeSiliconFlow, ids: Iterable[str]
) -> None:
    """Every id's video, whole, under each ``s3://`` prefix the block names."""
    seaweed = _seaweed.shared(request)
    for prefix in s3_keys(text):
        for rid in ids:
            name = default_name(rid, 0, "https://host/video.mp4")  # the fake serves .mp4
            assert object_bytes(seaweed, f"{prefix}{name}") == fake.video_bytes(rid), rid


def assert_videos(folder: Path, fake: FakeSiliconFlow) -> None:
    """Every job of the fake has its videos, whole, in ``folder``."""
    for rid in fake.jobs:
        assert (folder / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid), rid


# -- python ---------------------------------------------------------------------------------


SCRIPTS = [b for b in python_blocks() if "asyncio.run(" in b.text]
FRAGMENTS = [b for b in python_blocks() if b not in SCRIPTS and is_fragment(b)]
TEST_MODULES = [b for b in python_blocks() if defines_tests(b)]


def test_every_python_block_is_run() -> None:
    """Each python block is of a kind this module runs."""
    kinds = SCRIPTS + FRAGMENTS + TEST_MODULES
    assert [b for b in python_blocks() if b not in kinds] == []


@pytest.mark.parametrize("block", SCRIPTS, ids=lambda b: b.name)
def test_a_script_runs_as_printed(block: Block, tmp_path: Path) -> None:
    """A whole script runs against the fake, as ``python -c``, and gets every video."""
    assert free_names(block.text) == set(), "a script must import all it uses"
    fake = quick(FakeSiliconFlow(api_key=KEY))
    with fake.run_in_thread():
        proc = subprocess.run(
            [sys.executable, "-c", block.text],
            cwd=tmp_path,
            env=fake_env(fake),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert fake.jobs
    if "videos/" in block.text:
        assert_videos(tmp_path / "videos", fake)


#: What the README says surrounds a fragment.
FRAGMENT_NAMES = {"ids", "client"}


@pytest.mark.parametrize("block", FRAGMENTS, ids=lambda b: b.name)
async def test_a_fragment_runs_as_printed(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A fragment of an ``async def`` runs in a loop, given ``ids`` and ``client`` (and,
    for ``s3://``, the AWS variables naming a real SeaweedFS)."""
    assert free_names(block.text) <= FRAGMENT_NAMES
    async with FakeSiliconFlow(api_key=KEY) as fake:
        quick(fake)
        ids = [fake.add_job(run_seconds=0.1, videos=[20_000]) for _ in range(2)]
        for name, value in {**fake_env(fake), **s3_env(request, block.text)}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        async with AsyncClient() as client:
            namespace: dict[str, Any] = {"ids": ids, "client": client}
            code = compile(block.text, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            await eval(code, namespace)  # the README's own code
        if "s3://" in block.text:
            assert_objects(request, block.text, fake, ids)
        elif "videos/" in block.text:
            assert_videos(tmp_path / "videos", fake)


#: What a test block may use without importing it, and the import the test adds.
TEST_IMPORTS = {
    "FakeSiliconFlow": "from siliconflow_video.testing import FakeSiliconFlow",
    "create_app": "from fastapi_app import create_app  # examples/fastapi_app.py",
}


def needs_auto_mode(block: Block) -> bool:
    """Whether an ``async def`` fixture or test of the block lacks pytest-asyncio's own
    decorator (``@pytest_asyncio.fixture``, ``@pytest.mark.asyncio``)."""
    return any(
        isinstance(node, ast.AsyncFunctionDef)
        and not any("asyncio" in ast.unparse(d) for d in node.decorator_list)
        for node in ast.parse(block.text).body
    )


def stated_config(block: Block) -> str | None:
    """The pytest configuration the README states between the section's heading and the
    block (a ``toml`` block, or the words ``asyncio_mode = "auto"``), if the block needs
    one: a fresh project has none."""
    if not needs_auto_mode(block):
        return None
    tomls = re.findall(r"```toml\n(.*?)```", block.section, flags=re.S)
    if tomls:
        return str(tomls[-1])
    if 'asyncio_mode = "auto"' in block.section:
        return '[tool.pytest.ini_options]\nasyncio_mode = "auto"\n'
    return None


@pytest.mark.parametrize("block", TEST_MODULES, ids=lambda b: b.name)
def test_a_test_block_passes_in_a_fresh_project(block: Block, tmp_path: Path) -> None:
    """The test file is all of a fresh project (plus the configuration stated next to
    it), and pytest passes it."""
    free = free_names(block.text)
    assert free <= set(TEST_IMPORTS), f"{block.name} uses {free - set(TEST_IMPORTS)}"
    if "create_app" in free:
        shutil.copy(ROOT / "examples" / "fastapi_app.py", tmp_path)
    header = "".join(f"{TEST_IMPORTS[name]}\n" for name in sorted(free))
    (tmp_path / "test_readme_sample.py").write_text(header + block.text)
    config = stated_config(block)
    if config is not None:
        tomllib.loads(config)  # it is valid TOML
        (tmp_path / "pyproject.toml").write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SILICONFLOW_", "PYTEST"))},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b\d+ passed\b", proc.stdout), proc.stdout


# -- shell ----------------------------------------------------------------------------------


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


def ci_commands() -> list[list[str]]:
    return [
        c
        for c in commands((ROOT / ".ci" / "run").read_text())
        if "--upgrade" not in c and c[0] not in ("if", "fi", "apt-get")
    ]


def test_readme_commands_are_what_ci_runs() -> None:
    """The README's set-up, test and development commands are, parsed, the ones .ci/run
    runs, in the same order (CI adds only a pip upgrade, and PostgreSQL's server for the
    journal's tests when the machine lacks it)."""
    ci = ci_commands()
    setup, test, *_ = sh_blocks()
    [development] = [b for b in sh_blocks() if "ruff" in b]
    install = [c for c in commands(setup) if "siliconflow-video" not in c[0]]
    assert ci == install + commands(development)
    assert commands(test) == [ci[-1]] == [[".venv/bin/python", "-m", "pytest"]]


def is_install(words: list[str]) -> bool:
    pip_install = "install" in words and any(w.endswith("pip") for w in words)
    return pip_install or words[1:3] == ["-m", "venv"]


def is_benchmark(words: list[str]) -> bool:
    return words[1:3] == ["-m", "benchmarks"]


def test_the_install_lines_name_real_extras() -> None:
    """Each ``pip install`` in the README names extras pyproject.toml has, and one of them
    installs the library and command line without the test extra."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    installs = [
        words
        for block in blocks()
        if block.lang in ("sh", "text", "")
        for words in commands(block.text)
        if is_install(words) and "install" in words
    ]
    assert installs
    named = [
        {e for group in re.findall(r"\[([\w,-]+)\]", " ".join(words)) for e in group.split(",")}
        for words in installs
    ]
    for words, found in zip(installs, named, strict=True):
        assert found <= extras, words
    assert any("test" not in found for found in named)


def test_the_benchmark_command_takes_the_options_shown() -> None:
    """The benchmark command exists, with every option the README shows on its line."""
    lines = [line for b in sh_blocks() for line in b.splitlines() if "-m benchmarks" in line]
    if not lines:
        return
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for option in re.findall(r"--[\w-]+", "\n".join(lines)):
        assert option in proc.stdout, option


def runnable(part: str, ci: list[list[str]]) -> bool:
    words = shlex.split(part, comments=True)
    return bool(words) and not is_install(words) and not is_benchmark(words) and words not in ci


def test_the_shell_blocks_run_as_printed(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Every other command of the README's sh blocks runs, in order, in one shell,
    against the fake: exit 0, and no error line. ``$JOURNAL`` names a real PostgreSQL
    database and ``s3://`` a real SeaweedFS (the AWS variables set), as the README says."""
    ci = ci_commands()
    script = []
    for block in sh_blocks():
        for line in block.splitlines():
            parts = [p.strip() for p in line.split("&&") if runnable(p, ci)]
            if parts:
                script.append(" && ".join(parts))
    text = "\n".join(script)
    exported = re.search(r"^export SILICONFLOW_API_KEY=(\S+)", text, flags=re.M)
    fake = quick(FakeSiliconFlow(api_key=exported.group(1) if exported else KEY))
    placeholders = {w for c in commands(text) for w in c if re.fullmatch(r"[A-Z_]*ID[\w.]*", w)}
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    line = {"model": "Wan-AI/Wan2.2-T2V-A14B", "prompt": "a paper boat", "key": "line-1"}
    (tmp_path / "prompts.jsonl").write_text(json.dumps(line) + "\n")
    with fake.run_in_thread():
        for rid in sorted(placeholders):
            fake.add_job(rid, run_seconds=0.1, videos=[20_000])
        env = fake_env(fake)
        if exported:
            del env["SILICONFLOW_API_KEY"]  # the README's export sets it
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(s3_env(request, text))
        if "$JOURNAL" in text:
            env["JOURNAL"] = request.getfixturevalue("pg_url")
        proc = subprocess.run(
            ["bash", "-xeuo", "pipefail", "-c", text],  # -x: stderr names a failing command
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, f"{text}\n---\n{proc.stdout}\n---\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert not re.search(r"^error:", proc.stderr, flags=re.M), proc.stderr
    downloaded = {w for c in commands(text) if "download" in c for w in c} & placeholders
    for rid in downloaded:  # each id given to download was fetched
        assert fake.requests_for("video", rid), rid
    to_s3 = {w for c in commands(text) if any("s3://" in x for x in c) for w in c} & placeholders
    assert_objects(request, text, fake, to_s3)  # each id given an s3:// dest is in the bucket
    if any("submit" in c for c in commands(text)):
        assert fake.requests_for("submit")
    demo = any(c[:2] == ["siliconflow-video", "demo"] for c in commands(text))
    if demo and "not playable" in README.read_text():  # as the README says of the demo's videos
        made = list((tmp_path / "siliconflow-demo").glob("*.mp4"))
        assert made
        assert all(p.read_bytes()[4:8] != b"ftyp" for p in made)
