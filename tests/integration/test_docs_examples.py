"""Every command and code block in the README and the documentation runs, against a served instance
of the bundled repository (as `make serve` serves it), with the images in samples/; or it is marked
as not run, with the reason, by an HTML comment on the line before its fence:

    <!-- not-run: why it cannot run here -->

A fenced block that is neither marked nor in a language this test runs (bash, python) fails, so does
an indented code block (it cannot carry a marker), so a broken example in the docs fails the suite.

A walkthrough, a page with `<!-- docs-test: walkthrough -->` on one of its first lines, is one story whose
steps depend on each other (write a file, train, import, serve, call): its blocks are run in order as one
bash script in one fresh directory, against the server the page starts itself. A block after

    <!-- file: NAME -->

is a file the page shows: the script writes it as NAME instead of running it."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import free_port, serving

ADMIN_TOKEN = "docs-example-token"
DOCUMENTS = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    *sorted(p for p in (REPO / "docs").rglob("*.md") if "assets" not in p.relative_to(REPO / "docs").parts),
]
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
FILE = re.compile(r"^<!--\s*file:\s*(\S+?)\s*-->$")
WALKTHROUGH = re.compile(r"^<!--\s*docs-test:\s*walkthrough\s*-->$")
WALKTHROUGH_MARKER_LINES = 5  # the marker is on one of a page's first lines
SHELL, PYTHON = ("bash", "sh", "shell"), ("python", "py")
# Every example's server address; each runnable block is run with the served instance's instead.
EXAMPLE_ADDRESS = "localhost:8000"
EXAMPLE_GRPC_ADDRESS = "localhost:8001"  # its gRPC address likewise
# A walkthrough starts its own server with this flag; it is run with a free port instead.
EXAMPLE_PORT_FLAG = "--port 8000"
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
    file: str | None = None  # a walkthrough's file (the `file:` marker's NAME): written, not run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, each with the not-run or file marker on the line before it."""
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
                file.group(1) if (file := FILE.match(before)) else None,
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


def is_walkthrough(path: Path) -> bool:
    head = path.read_text().splitlines()[:WALKTHROUGH_MARKER_LINES]
    return any(WALKTHROUGH.match(line.strip()) for line in head)


BLOCKS = [block for path in DOCUMENTS for block in blocks_of(path)]
RUNNABLE = [block for block in BLOCKS if block.not_run is None]
WALKTHROUGHS = [path for path in DOCUMENTS if is_walkthrough(path)]
# Each of these runs on its own against the bundled repository; a walkthrough's blocks run together.
SEPARATE = [block for block in RUNNABLE if block.path not in WALKTHROUGHS]


def test_the_documents_are_found_and_hold_examples():
    names = {path.relative_to(REPO).as_posix() for path in DOCUMENTS}
    assert {"README.md", "docs/quickstart.md", "docs/api.md", "docs/v2-protocol.md"} <= names
    assert sum(block.path.name == "README.md" for block in RUNNABLE) >= 3  # the quickstart's three requests
    assert len(SEPARATE) > 20
    assert "docs/bring-your-own-vae.md" in {path.relative_to(REPO).as_posix() for path in WALKTHROUGHS}


def test_every_block_runs_here_or_says_why_not():
    unknown = [
        f"{b.where} ({b.language or 'no language'})"
        for b in RUNNABLE
        if b.language not in SHELL + PYTHON and b.file is None  # a walkthrough's file is written, whatever it holds
    ]
    assert not unknown, (
        f"code blocks this test cannot run; mark each with <!-- not-run: why --> on the line before it: {unknown}"
    )
    unexplained = [block.where for block in BLOCKS if block.not_run is not None and len(block.not_run) < 5]
    assert not unexplained, f"not-run markers without a reason: {unexplained}"
    stray = [block.where for block in RUNNABLE if block.file is not None and block.path not in WALKTHROUGHS]
    assert not stray, (
        f"file markers outside a walkthrough (only a walkthrough's later blocks can use the file): {stray}; "
        "put <!-- docs-test: walkthrough --> at the top of the page, or show the file as an example to run"
    )


def test_no_indented_code_blocks():
    found = [f"{path.relative_to(REPO)}:{line}" for path in DOCUMENTS for line in indented_code(path)]
    assert not found, f"indented code blocks cannot carry a not-run marker; fence them: {found}"


def test_the_quickstart_uses_images_that_ship():
    for block in RUNNABLE:
        for image in re.findall(r"@(samples/[\w.-]+)", block.code):
            assert (REPO / image).is_file(), f"{block.where}: {image} is not in the repository"


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    """The bundled repository, served as `make serve` serves it, with an admin token for the control examples:
    (its HTTP address, its gRPC address; None for a VAE_BASE_URL without VAE_GRPC_TARGET)."""
    grpc_port = str(free_port())
    with serving(
        tmp_path_factory.mktemp("docs-server"),
        VAE_MODEL_REPOSITORY=str(REPO / "artifacts"),
        VAE_ADMIN_TOKEN=ADMIN_TOKEN,
        VAE_GRPC_PORT=grpc_port,
    ) as url:
        remote = os.environ.get("VAE_BASE_URL") is not None
        yield url.split("://", 1)[1], os.environ.get("VAE_GRPC_TARGET") if remote else f"127.0.0.1:{grpc_port}"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh directory that looks like the repository's root to an example: samples/ is there."""
    (tmp_path / "samples").symlink_to(REPO / "samples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", SEPARATE, ids=[block.where for block in SEPARATE])
def test_the_example_runs(block, docs_server, workdir):
    remote = os.environ.get("VAE_BASE_URL") is not None
    if remote and "VAE_ADMIN_TOKEN" in block.code:
        pytest.skip("the control examples need the server's admin token, unknown for VAE_BASE_URL")
    if "vae-train" in block.code and importlib.util.find_spec("torch") is None:
        pytest.skip("vae-train needs the train extra (make install-train)")
    address, grpc_address = docs_server
    if EXAMPLE_GRPC_ADDRESS in block.code and grpc_address is None:
        pytest.skip("a gRPC example, and VAE_BASE_URL is set without VAE_GRPC_TARGET")
    code = block.code.replace(EXAMPLE_ADDRESS, address).replace(EXAMPLE_GRPC_ADDRESS, grpc_address or "")
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


# A walkthrough's script: whatever fails, the servers it started in the background are stopped on exit.
STOP_BACKGROUND_JOBS = """stop_background_jobs() {
  local status=$? job
  for job in $(jobs -p); do kill "$job" 2>/dev/null || true; done
  wait
  exit "$status"
}
trap stop_background_jobs EXIT
"""
HEREDOC_END = "DOCS_WALKTHROUGH_EOF"


def walkthrough_script(path: Path, port: int) -> str:
    """A walkthrough's runnable blocks, in order, as one bash script: shell blocks as they are, Python blocks
    through `python -`, file blocks written to their files; the example port replaced by `port`."""
    steps = []
    for block in blocks_of(path):
        if block.not_run is not None:
            continue
        code = block.code.replace(EXAMPLE_ADDRESS, f"127.0.0.1:{port}").replace(EXAMPLE_PORT_FLAG, f"--port {port}")
        assert HEREDOC_END not in code, f"{block.where}: holds {HEREDOC_END}, this test's heredoc delimiter"
        step = f"printf '\\n### %s\\n' {shlex.quote(block.where)}\n"
        if block.file is not None:
            step += f"cat > {shlex.quote(block.file)} <<'{HEREDOC_END}'\n{code}{HEREDOC_END}\n"
        elif block.language in PYTHON:
            step += f"python - <<'{HEREDOC_END}'\n{code}{HEREDOC_END}\n"
        else:
            step += code
        steps.append(step)
    return PRELUDE + STOP_BACKGROUND_JOBS + "".join(steps)


@pytest.mark.parametrize("page", WALKTHROUGHS, ids=[path.relative_to(REPO).as_posix() for path in WALKTHROUGHS])
def test_the_walkthrough_runs_in_order(page, workdir):
    """The page's blocks as one script in one fresh directory, with its own server on a free port."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("a walkthrough trains and imports a PyTorch model: it needs the train extra (make install-train)")
    script = walkthrough_script(page, free_port())
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("VAE_")},  # its own server
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=workdir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: on a timeout, the script and its servers are killed
    )
    try:
        output, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    logs = "".join(
        f"\n{log.name} (last 2,000 characters): {log.read_text(errors='replace')[-2000:]}"
        for log in sorted(workdir.glob("*.log"))
    )
    assert process.returncode == 0, (
        f"{page.relative_to(REPO)} failed ({process.returncode}); the script's output, last 6,000 characters:\n"
        f"{output[-6000:]}{logs}"
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
