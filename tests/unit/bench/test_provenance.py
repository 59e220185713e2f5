"""What a result file records about the code and the model it measured."""

from __future__ import annotations

import json
import subprocess

from bench.provenance import git_state, model_on_disk


def git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_git_state_names_the_commit_and_the_changed_files(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": False, "changed": [], "changed_count": 0}
    (tmp_path / "a.py").write_text("2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True, "changed": ["a.py"], "changed_count": 1}


def test_git_state_outside_a_repository_says_it_does_not_know(tmp_path, monkeypatch):
    monkeypatch.delenv("GIT_DIR", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if the temp dir is inside a repo
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None and state["error"].startswith("git failed")


def test_model_on_disk_reads_the_graph_hashes_from_the_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps({"name": "m", "version": "1.0.0", "encoder": {"sha256": "e" * 64}, "decoder": {"sha256": "d" * 64}})
    )
    assert model_on_disk(tmp_path) == {
        "name": "m",
        "version": "1.0.0",
        "encoder_sha256": "e" * 64,
        "decoder_sha256": "d" * 64,
        "source": str(tmp_path / "manifest.json"),
    }
