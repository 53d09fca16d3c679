"""Atomic outputs: a staged folder appears whole or not at all."""
import os

import pytest

from tfdpgan import atomic


def _write(folder, text):
    with open(os.path.join(folder, "f.txt"), "w") as f:
        f.write(text)


def test_staged_dir_publishes_refuses_and_replaces(tmp_path):
    out = str(tmp_path / "out")
    with atomic.staged_dir(out) as staging:
        _write(staging, "one")
        assert not os.path.exists(out)
    assert open(os.path.join(out, "f.txt")).read() == "one"
    with pytest.raises(FileExistsError):
        with atomic.staged_dir(out) as staging:
            _write(staging, "two")
    with atomic.staged_dir(out, overwrite=True) as staging:
        _write(staging, "three")
    assert open(os.path.join(out, "f.txt")).read() == "three"
    assert os.listdir(tmp_path) == ["out"]  # no staging or trash folder left


def test_staged_dir_failure_keeps_the_old_output(tmp_path):
    out = str(tmp_path / "out")
    with atomic.staged_dir(out) as staging:
        _write(staging, "old")
    with pytest.raises(RuntimeError):
        with atomic.staged_dir(out, overwrite=True) as staging:
            _write(staging, "half")
            raise RuntimeError("interrupted")
    assert open(os.path.join(out, "f.txt")).read() == "old"
    assert os.listdir(tmp_path) == ["out"]


def test_json_is_atomic_and_refuses_nan(tmp_path):
    path = str(tmp_path / "a.json")
    atomic.write_json_atomic(path, {"x": 1})
    with pytest.raises(ValueError):
        atomic.write_json_atomic(path, {"x": float("nan")})
    assert open(path).read() == '{\n  "x": 1\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]


def test_text_file_gets_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "card.json"
        atomic.write_json_atomic(str(path), {"a": 1})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_text_is_utf8_whatever_the_locale(tmp_path, monkeypatch):
    monkeypatch.setenv("LC_ALL", "C")
    path = str(tmp_path / "card.md")
    atomic.write_text_atomic(path, "ε = 3, δ = 1e-5\n")
    with open(path, "rb") as f:
        assert f.read().decode("utf-8") == "ε = 3, δ = 1e-5\n"


def test_bytes_are_atomic(tmp_path):
    path = str(tmp_path / "samples.png")
    atomic.write_bytes_atomic(path, b"\x89PNG\x00\xff")
    with open(path, "rb") as f:
        assert f.read() == b"\x89PNG\x00\xff"
    assert os.listdir(tmp_path) == ["samples.png"]


def test_remove_leftovers_removes_only_what_a_killed_writer_left(tmp_path):
    out = str(tmp_path / "generator")
    with atomic.staged_dir(out) as staging:
        _write(staging, "complete")
    # what SIGKILL leaves: a staging folder, an old-version trash folder, a temporary file
    for name in (".generator.tmp-abc123", ".generator.old-def456"):
        os.makedirs(tmp_path / name / "variables")
    (tmp_path / ".tmp-xyz").write_text("half")
    os.makedirs(tmp_path / ".eval.tmp-ghi789")   # another command's output: not ours, kept
    (tmp_path / ".hidden_config").write_text("keep")
    (tmp_path / "flags.txt").write_text("keep")
    removed = atomic.remove_leftovers(str(tmp_path), staged=["generator"])
    assert sorted(removed) == [".generator.old-def456", ".generator.tmp-abc123", ".tmp-xyz"]
    assert sorted(os.listdir(tmp_path)) == [".eval.tmp-ghi789", ".hidden_config", "flags.txt",
                                            "generator"]
    assert open(os.path.join(out, "f.txt")).read() == "complete"
    assert atomic.remove_leftovers(str(tmp_path / "missing")) == []
