"""The on-disk sha256 cache: a model file is hashed once, and again whenever it may have changed."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from edgeeval.config import sha256_cache
from edgeeval.config.sha256_cache import CACHE_DIR_ENV, cache_dir, cached_sha256
from edgeeval.errors import ModelFileError

from cli_support import run_cli


@pytest.fixture
def hashes(monkeypatch) -> list[Path]:
    """The files actually read and hashed (not answered from the cache)."""
    read = []
    real = sha256_cache.sha256_file

    def counting(path, *args, **kwargs):
        read.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sha256_cache, "sha256_file", counting)
    return read


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "models" / "m.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry_files(cache: Path) -> list[Path]:
    return sorted((cache / "sha256").glob("*.json"))


def later() -> None:
    """Let the clock move past the file's timestamps (some filesystems keep them to a few ms)."""
    time.sleep(0.05)


def test_second_call_is_answered_from_the_cache(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    assert cached_sha256(model, cache) == digest(model)
    assert cached_sha256(model, cache) == digest(model)
    assert cached_sha256(str(model), cache) == digest(model)
    assert hashes == [model]
    assert len(entry_files(cache)) == 1


def test_a_symlink_shares_the_entry_of_its_target(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    assert cached_sha256(model, cache) == cached_sha256(link, cache) == digest(model)
    assert len(hashes) == 1


def test_changed_mtime_means_hash_again(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    cached_sha256(model, cache)
    info = model.stat()
    os.utime(model, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    assert cached_sha256(model, cache) == digest(model)
    assert len(hashes) == 2


def test_changed_size_means_hash_again(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    cached_sha256(model, cache)
    with open(model, "ab") as handle:
        handle.write(b"more")
    assert cached_sha256(model, cache) == digest(model)
    assert len(hashes) == 2 and len(entry_files(cache)) == 1  # the path's entry was replaced, not added


def test_a_replaced_file_with_the_same_size_and_mtime_is_hashed_again(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    old = cached_sha256(model, cache)
    info = model.stat()
    new = model.with_name("new.gguf")
    new.write_bytes(b"EVIL" + model.read_bytes()[4:])  # same size
    os.utime(new, ns=(info.st_atime_ns, info.st_mtime_ns))  # same mtime
    os.replace(new, model)  # another inode
    assert cached_sha256(model, cache) == digest(model) != old
    assert len(hashes) == 2


def test_a_file_rewritten_in_place_with_its_old_mtime_is_hashed_again(model, tmp_path, hashes):
    # Same path, size, inode and mtime (cp -p, touch -d): only ctime, which nobody can set, tells.
    cache = tmp_path / "cache"
    old = cached_sha256(model, cache)
    info = model.stat()
    later()
    with open(model, "r+b") as handle:
        handle.write(b"EVIL")
    os.utime(model, ns=(info.st_atime_ns, info.st_mtime_ns))
    after = model.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (info.st_size, info.st_mtime_ns, info.st_ino)
    assert cached_sha256(model, cache) == digest(model) != old
    assert len(hashes) == 2


def test_a_wrong_remembered_value_is_not_trusted_once_the_file_changes(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    cached_sha256(model, cache)
    [entry] = entry_files(cache)
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "sha256": "0" * 64}))
    later()
    with open(model, "ab") as handle:
        handle.write(b"x")
    assert cached_sha256(model, cache) == digest(model)
    assert json.loads(entry.read_text())["sha256"] == digest(model)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"file": 1}', '{"sha256": "abc"}', "\xff\xfe garbage",
                                  '{"file": {}, "sha256": "' + "0" * 64 + '"}'])
def test_a_corrupt_entry_is_ignored_and_rewritten(model, tmp_path, hashes, text):
    cache = tmp_path / "cache"
    cached_sha256(model, cache)
    [entry] = entry_files(cache)
    entry.write_text(text, encoding="utf-8", errors="replace")
    assert cached_sha256(model, cache) == digest(model)
    assert json.loads(entry.read_text())["sha256"] == digest(model)
    assert cached_sha256(model, cache) == digest(model)
    assert len(hashes) == 2


def test_the_cache_is_owner_only_whatever_the_umask(model, tmp_path):
    cache = tmp_path / "cache"
    old_umask = os.umask(0)
    try:
        cached_sha256(model, cache)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "sha256").stat().st_mode) == 0o700
    [entry] = entry_files(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert [p.name for p in (cache / "sha256").iterdir()] == [entry.name]  # no temporary file left behind


def test_a_cache_directory_open_to_others_is_closed(model, tmp_path):
    cache = tmp_path / "cache"
    (cache / "sha256").mkdir(parents=True)
    (cache / "sha256").chmod(0o777)
    cached_sha256(model, cache)
    assert stat.S_IMODE((cache / "sha256").stat().st_mode) == 0o700


def test_a_cache_that_cannot_be_written_does_not_stop_anything(model, tmp_path, hashes):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    assert cached_sha256(model, blocker / "cache") == digest(model)
    assert cached_sha256(model, blocker / "cache") == digest(model)
    assert len(hashes) == 2


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a directory away")
def test_entries_in_someone_elses_directory_are_not_trusted(model, tmp_path, hashes):
    cache = tmp_path / "cache"
    cached_sha256(model, cache)
    [entry] = entry_files(cache)
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "sha256": "0" * 64}))
    os.chown(cache / "sha256", 12345, -1)
    assert cached_sha256(model, cache) == digest(model)
    assert len(hashes) == 2


def test_a_file_that_changes_while_it_is_read_is_not_remembered(model, tmp_path, monkeypatch):
    real = sha256_cache.sha256_file

    def hash_then_change(path):
        value = real(path)
        later()
        with open(model, "ab") as handle:
            handle.write(b"x")
        return value

    monkeypatch.setattr(sha256_cache, "sha256_file", hash_then_change)
    cached_sha256(model, tmp_path / "cache")
    assert entry_files(tmp_path / "cache") == []


def test_errors_are_those_of_reading_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="file not found"):
        cached_sha256(tmp_path / "missing.gguf", tmp_path / "cache")
    with pytest.raises(ModelFileError, match="is a directory"):
        cached_sha256(tmp_path, tmp_path / "cache")


def test_where_the_cache_lives(monkeypatch, tmp_path):
    assert Path.home() / ".cache" not in cache_dir().parents  # tests never write into the real cache
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edgeeval"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == Path.home() / ".cache" / "edgeeval"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_run_and_models_verify_hash_each_model_once(project_dir, tmp_path, monkeypatch, hashes, capsys):
    from edgeeval.config.models import load_models_config
    from edgeeval.run.planning import prepare_model

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    models = project_dir.parent / "models"
    project = load_models_config(project_dir / "models.toml", str(models))
    first = prepare_model(project, "bio-small")
    assert prepare_model(project, "bio-small").sha256 == first.sha256 == digest(models / "bio.gguf")
    assert run_cli(project_dir, "models", "--verify", "--models-dir", str(models)) == 0
    assert first.sha256 in capsys.readouterr().out
    assert sorted(p.name for p in hashes) == ["bio.gguf", "general.gguf"]
