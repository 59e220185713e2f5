"""Every command and code block in the README and the documentation runs, against a served instance
of the bundled repository (as `make serve` serves it), with the images in samples/; or it is marked
as not run, with the reason, by an HTML comment on the line before its fence:

    <!-- not-run: why it cannot run here -->

A fenced block that is neither marked nor in a language this test runs (bash, python) fails, so does
an indented code block (it cannot carry a marker), so a broken example in the docs fails the suite."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import serving

ADMIN_TOKEN = "docs-example-token"
DOCUMENTS = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    *sorted(p for p in (REPO / "docs").rglob("*.md") if "assets" not in p.relative_to(REPO / "docs").parts),
]
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
SHELL, PYTHON = ("bash", "sh", "shell"), ("python", "py")
# Every example's server address; each runnable block is run with the served instance's instead.
EXAMPLE_ADDRESS = "localhost:8000"
# In a shell example curl fails on an HTTP error status (as --fail-with-body), unless the example prints
# the status itself (-w); everything else runs under `set -euo pipefail`.
PRELUDE = """set -euo pipefail
curl() {
  local arg
  for arg in "$@"; do
    case "$arg" in -w|--write-out) command curl "$@"; return;; esac
  done
  command curl --fail-with-body --show-error "$@"
}
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the fence's line, 1-based
    language: str
    code: str
    not_run: str | None  # the marker's reason, or None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, each with the not-run marker on the line before it."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        end = next(
            (
                j
                for j in range(i + 1, len(lines))
                if lines[j].startswith(opening.group(1)) and not lines[j].strip(opening.group(1)[0]).strip()
            ),
            None,
        )
        assert end is not None, f"{path.relative_to(REPO)}:{i + 1}: an unclosed code fence"
        blocks.append(
            Block(
                path,
                i + 1,
                opening.group(2).lower(),
                "\n".join(lines[i + 1 : end]) + "\n",
                marker.group(1) if marker else None,
            )
        )
        i = end + 1
    return blocks


def indented_code(path: Path) -> list[int]:
    """Lines that open an indented code block: four spaces after a blank line, outside a fence and a list."""
    found, in_fence, previous = [], False, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.strip()):
            in_fence = not in_fence
        elif not in_fence and line.startswith("    ") and line.strip() and not previous.strip():
            found.append(number)
        if line.strip():
            previous = line
        elif previous and not previous.startswith(("-", "*", " ", "|")) and not re.match(r"\d+\. ", previous):
            previous = ""
    return found


BLOCKS = [block for path in DOCUMENTS for block in blocks_of(path)]
RUNNABLE = [block for block in BLOCKS if block.not_run is None]


def test_the_documents_are_found_and_hold_examples():
    names = {path.relative_to(REPO).as_posix() for path in DOCUMENTS}
    assert {"README.md", "docs/quickstart.md", "docs/api.md", "docs/v2-protocol.md"} <= names
    assert sum(block.path.name == "README.md" for block in RUNNABLE) >= 3  # the quickstart's three requests
    assert len(RUNNABLE) > 20


def test_every_block_runs_here_or_says_why_not():
    unknown = [f"{b.where} ({b.language or 'no language'})" for b in RUNNABLE if b.language not in SHELL + PYTHON]
    assert not unknown, (
        f"code blocks this test cannot run; mark each with <!-- not-run: why --> on the line before it: {unknown}"
    )
    unexplained = [block.where for block in BLOCKS if block.not_run is not None and len(block.not_run) < 5]
    assert not unexplained, f"not-run markers without a reason: {unexplained}"


def test_no_indented_code_blocks():
    found = [f"{path.relative_to(REPO)}:{line}" for path in DOCUMENTS for line in indented_code(path)]
    assert not found, f"indented code blocks cannot carry a not-run marker; fence them: {found}"


def test_the_quickstart_uses_images_that_ship():
    for block in RUNNABLE:
        for image in re.findall(r"@(samples/[\w.-]+)", block.code):
            assert (REPO / image).is_file(), f"{block.where}: {image} is not in the repository"


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    """The bundled repository, served as `make serve` serves it, with an admin token for the control examples."""
    with serving(
        tmp_path_factory.mktemp("docs-server"),
        VAE_MODEL_REPOSITORY=str(REPO / "artifacts"),
        VAE_ADMIN_TOKEN=ADMIN_TOKEN,
    ) as url:
        yield url


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh directory that looks like the repository's root to an example: samples/ is there."""
    (tmp_path / "samples").symlink_to(REPO / "samples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.where for block in RUNNABLE])
def test_the_example_runs(block, docs_server, workdir):
    remote = os.environ.get("VAE_BASE_URL") is not None
    if remote and "VAE_ADMIN_TOKEN" in block.code:
        pytest.skip("the control examples need the server's admin token, unknown for VAE_BASE_URL")
    if "vae-train" in block.code and importlib.util.find_spec("torch") is None:
        pytest.skip("vae-train needs the train extra (make install-train)")
    address = docs_server.split("://", 1)[1]
    code = block.code.replace(EXAMPLE_ADDRESS, address)
    if block.language in PYTHON:
        exec(compile(code, block.where, "exec"), {"__name__": "docs_example"})
        return
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "VAE_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    result = subprocess.run(
        ["bash", "-c", PRELUDE + code], cwd=workdir, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (
        f"{block.where} failed ({result.returncode}):\n{code}\n"
        f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    )


def slug(heading: str) -> str:
    """A heading's anchor, as Python-Markdown's toc extension (which mkdocs uses) makes it."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text))


def test_the_readmes_links_into_the_docs_lead_somewhere():
    """mkdocs --strict checks the links between docs pages; the README and the changelog are outside
    the site, so their links (to pages and headings) are checked here."""
    for document in (REPO / "README.md", REPO / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            assert (REPO / path).exists(), f"{document.name}: {target} does not exist"
            if anchor:
                headings = re.findall(r"^#+\s+(.*)$", (REPO / path).read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{document.name}: no heading for {target}"
