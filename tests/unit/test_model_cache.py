"""The shared download cache on a temporary directory: its key, its lock, its integrity check, its LRU choice."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from finetune_trainer import model_cache
from finetune_trainer.model_cache import (
    MANIFEST,
    CacheBusy,
    CacheKey,
    EntryUse,
    SharedCache,
    evictions,
    listing_version,
    locked,
    problems,
)

MODEL = CacheKey("s3://models/tiny-llama/", "listing-sha256:aaaa")


def writer(files: dict[str, bytes], calls: list[int] | None = None):
    """A download that writes ``files`` and counts its calls."""

    def download(directory: Path) -> None:
        if calls is not None:
            calls.append(1)
        for name, content in files.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(content)

    return download


WEIGHTS = {"config.json": b"{}", "model.safetensors": b"w" * 1000, "tok/tokenizer.json": b"t" * 10}


# -- the key --------------------------------------------------------------------------------------------------


def test_the_key_names_the_uri_and_its_version_and_nothing_else():
    assert CacheKey("s3://a/m/", "v1").name == CacheKey("s3://a/m/", "v1").name
    assert CacheKey("s3://a/m/", "v1").name != CacheKey("s3://a/m/", "v2").name
    assert CacheKey("s3://a/m/", "v1").name != CacheKey("s3://b/m/", "v1").name
    assert len(CacheKey("hf://org/" + "x" * 5000, "c").name) == 40  # a path component, whatever the uri


def test_a_listing_version_changes_with_any_objects_etag_or_size_and_not_with_order():
    listing = [("config.json", 2, '"e1"'), ("model.safetensors", 1000, '"e2"')]
    assert listing_version(listing) == listing_version(list(reversed(listing)))
    assert listing_version(listing) != listing_version([listing[0], ("model.safetensors", 1000, '"e3"')])
    assert listing_version(listing) != listing_version([listing[0], ("model.safetensors", 1001, '"e2"')])


# -- filling and reading ----------------------------------------------------------------------------------------


def test_a_second_get_of_the_same_key_downloads_nothing(tmp_path):
    cache, calls = SharedCache(tmp_path), []
    first = cache.get(MODEL, writer(WEIGHTS, calls))
    second = cache.get(MODEL, writer(WEIGHTS, calls))
    assert first == second and len(calls) == 1
    assert (second / "tok" / "tokenizer.json").read_bytes() == b"t" * 10
    assert cache.stats.to_dict() == {"hits": 1, "misses": 1, "bytes": 1012, "evictions": 0, "refills": 0}


def test_the_manifest_records_each_files_size_and_sha256(tmp_path):
    cache = SharedCache(tmp_path)
    cache.get(MODEL, writer(WEIGHTS))
    manifest = json.loads((cache.entry(MODEL) / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"]["size"] == 1000
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64
    assert manifest["uri"] == MODEL.uri and manifest["bytes"] == 1012


@pytest.mark.parametrize(
    "damage",
    [
        lambda files: (files / "model.safetensors").write_bytes(b"x" * 1000),  # same size, other bytes
        lambda files: (files / "model.safetensors").write_bytes(b"w" * 10),  # truncated
        lambda files: (files / "config.json").unlink(),
        lambda files: (files / "extra.bin").write_bytes(b"?"),
        lambda files: (files.parent / MANIFEST).write_text("{not json"),
    ],
    ids=["bytes", "truncated", "missing", "extra", "manifest"],
)
def test_a_corrupted_entry_is_detected_and_filled_again(tmp_path, damage):
    cache, calls = SharedCache(tmp_path), []
    files = cache.get(MODEL, writer(WEIGHTS, calls))
    damage(files)
    assert problems(cache.entry(MODEL), MODEL, hashes=True)
    files = cache.get(MODEL, writer(WEIGHTS, calls))
    assert len(calls) == 2 and cache.stats.refills == 1
    assert (files / "model.safetensors").read_bytes() == b"w" * 1000
    assert not problems(cache.entry(MODEL), MODEL, hashes=True)


def test_a_read_only_reader_takes_a_whole_entry_and_refuses_a_truncated_one(tmp_path):
    cache = SharedCache(tmp_path)
    assert cache.readable(MODEL) is None
    files = cache.get(MODEL, writer(WEIGHTS))
    assert cache.readable(MODEL) == files
    (files / "model.safetensors").write_bytes(b"w")
    assert cache.readable(MODEL) is None


def test_an_entry_of_another_key_under_this_keys_name_is_not_used(tmp_path):
    cache = SharedCache(tmp_path)
    cache.get(MODEL, writer(WEIGHTS))
    other = CacheKey(MODEL.uri, "listing-sha256:bbbb")
    (cache.root / "entries" / MODEL.name).rename(cache.root / "entries" / other.name)
    assert problems(cache.entry(other), other, hashes=False) == ["the manifest is of another download"]


def test_a_failed_download_leaves_no_entry_and_no_staging(tmp_path):
    cache = SharedCache(tmp_path)

    def broken(directory: Path) -> None:
        (directory / "config.json").write_bytes(b"{}")
        raise ConnectionError("the store went away")

    with pytest.raises(ConnectionError):
        cache.get(MODEL, broken)
    assert not cache.entry(MODEL).exists() and not list((tmp_path / "staging").iterdir())
    assert not (tmp_path / "locks" / f"{MODEL.name}.lock").exists()


def test_concurrent_gets_of_one_key_download_it_once(tmp_path):
    calls: list[int] = []
    started = threading.Barrier(4)

    def slow(directory: Path) -> None:
        time.sleep(0.3)  # long enough for the others to find the lock held
        writer(WEIGHTS, calls)(directory)

    def get() -> None:
        started.wait()
        SharedCache(tmp_path).get(MODEL, slow)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


# -- what another pod of the namespace may plant in the volume ---------------------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [
        {"files": {"config.json": 2}},  # a file's facts that are not a mapping
        {"files": {"config.json": {"size": "2", "sha256": "x"}}},
        {"files": ["config.json"]},
        {"bytes": -1},
        {"lastUsed": "yesterday"},
        [],
    ],
    ids=["facts", "size", "files", "bytes", "last-used", "list"],
)
def test_a_manifest_of_another_shape_is_refused_and_the_entry_filled_again(tmp_path, manifest):
    cache, calls = SharedCache(tmp_path), []
    cache.get(MODEL, writer(WEIGHTS, calls))
    path = cache.entry(MODEL) / MANIFEST
    written = json.loads(path.read_text())
    path.write_text(json.dumps({**written, **manifest} if isinstance(manifest, dict) else manifest))
    assert problems(cache.entry(MODEL), MODEL, hashes=False) == ["no readable manifest"]
    assert cache.readable(MODEL) is None and cache.uses()[0].last_used == 0.0
    cache.get(MODEL, writer(WEIGHTS, calls))
    assert len(calls) == 2 and cache.stats.refills == 1


def test_a_manifest_over_the_limit_is_not_read(tmp_path, monkeypatch):
    cache = SharedCache(tmp_path)
    cache.get(MODEL, writer(WEIGHTS))
    assert not problems(cache.entry(MODEL), MODEL, hashes=False)
    monkeypatch.setattr(model_cache, "MAX_MANIFEST_BYTES", (cache.entry(MODEL) / MANIFEST).stat().st_size - 1)
    assert problems(cache.entry(MODEL), MODEL, hashes=False) == ["no readable manifest"]


def test_a_fifo_for_a_manifest_is_never_waited_on(tmp_path):
    cache = SharedCache(tmp_path)
    cache.get(MODEL, writer(WEIGHTS))
    (cache.entry(MODEL) / MANIFEST).unlink()
    os.mkfifo(cache.entry(MODEL) / MANIFEST)
    found = []
    thread = threading.Thread(target=lambda: found.append(problems(cache.entry(MODEL), MODEL, hashes=True)))
    thread.daemon = True
    thread.start()
    thread.join(30)  # a bound for a busy machine: opening a FIFO to read blocks until a writer comes, forever
    assert found == [["no readable manifest"]]


def test_a_linked_entry_is_not_read_where_it_points(tmp_path):
    cache = SharedCache(tmp_path / "cache")
    cache.get(MODEL, writer(WEIGHTS))
    elsewhere = tmp_path / "elsewhere"
    cache.entry(MODEL).rename(elsewhere)  # a whole, matching entry, outside the cache
    cache.entry(MODEL).symlink_to(elsewhere)
    assert problems(cache.entry(MODEL), MODEL, hashes=True) == ["not a directory of the cache"]
    assert cache.readable(MODEL) is None
    files = cache.get(MODEL, writer(WEIGHTS))
    assert not files.parent.is_symlink() and cache.stats.refills == 1
    assert (elsewhere / "files" / "model.safetensors").is_file()  # a link is removed, never what it points at
    assert not list((tmp_path / "cache" / "trash").iterdir())


def test_a_linked_directory_inside_an_entry_is_a_name_never_followed(tmp_path):
    cache = SharedCache(tmp_path / "cache")
    files = cache.get(MODEL, writer(WEIGHTS))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "tokenizer.json").write_bytes(b"t" * 10)
    (files / "tok" / "tokenizer.json").unlink()
    (files / "tok").rmdir()
    (files / "tok").symlink_to(tmp_path / "elsewhere")
    assert problems(cache.entry(MODEL), MODEL, hashes=True) == [
        "'tok': not in the manifest",
        "'tok/tokenizer.json': missing",
    ]


def test_an_entry_with_more_names_than_the_limit_is_refused_without_walking_them_all(tmp_path, monkeypatch):
    cache = SharedCache(tmp_path)
    files = cache.get(MODEL, writer(WEIGHTS))
    monkeypatch.setattr(model_cache, "MAX_ENTRY_NAMES", 10)
    assert not problems(cache.entry(MODEL), MODEL, hashes=False)
    for i in range(10):
        (files / f"planted{i}").mkdir()
    assert problems(cache.entry(MODEL), MODEL, hashes=False) == ["more than 10 names under the entry"]


# -- the lock ---------------------------------------------------------------------------------------------------


def test_a_held_lock_makes_the_next_holder_wait_until_its_limit(tmp_path):
    lock = tmp_path / "k.lock"
    with locked(lock), pytest.raises(CacheBusy), locked(lock, wait=0.2, poll=0.05):
        pass
    assert not lock.exists()


def test_a_lock_left_by_a_killed_pod_is_taken_over_after_it_goes_stale(tmp_path):
    lock = tmp_path / "k.lock"
    lock.write_text("dead-host:1:token")
    old = time.time() - 600
    os.utime(lock, (old, old))
    with locked(lock, stale_after=120, wait=5, poll=0.05):
        assert lock.read_text() != "dead-host:1:token"
    assert not lock.exists()


@pytest.mark.parametrize("plant", ["fifo", "link"])
def test_a_stale_lock_that_is_no_lock_file_is_taken_over_without_reading_it(tmp_path, plant):
    lock = tmp_path / "k.lock"
    if plant == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to("/dev/zero")
    old = time.time() - 600
    os.utime(lock, (old, old), follow_symlinks=False)
    held = threading.Event()

    def take() -> None:
        with locked(lock, stale_after=120, wait=5, poll=0.05):
            held.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(30)  # a bound for a busy machine: reading a FIFO or /dev/zero never ends
    assert held.is_set() and not os.path.lexists(lock)


def test_a_fresh_lock_is_not_taken_over(tmp_path):
    lock = tmp_path / "k.lock"
    lock.write_text("live-host:1:token")
    with pytest.raises(CacheBusy), locked(lock, stale_after=120, wait=0.2, poll=0.05):
        pass
    assert lock.read_text() == "live-host:1:token"


def test_a_held_lock_is_kept_fresh_by_its_heartbeat(tmp_path):
    lock = tmp_path / "k.lock"
    old = time.time() - 60
    with locked(lock, stale_after=0.4):
        os.utime(lock, (old, old))
        deadline = time.monotonic() + 30  # a bound for a busy machine, not a speed asserted
        while lock.stat().st_mtime == old and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.stat().st_mtime > old


# -- eviction -----------------------------------------------------------------------------------------------------


def test_eviction_takes_the_least_recently_used_first_until_the_new_entry_fits():
    entries = [EntryUse("a", 400, 3.0), EntryUse("b", 400, 1.0), EntryUse("c", 400, 2.0)]
    assert evictions(entries, max_bytes=1000, incoming=0) == ["b"]
    assert evictions(entries, max_bytes=1000, incoming=300) == ["b", "c"]
    assert evictions(entries, max_bytes=2000, incoming=300) == []


def test_an_entry_larger_than_the_limit_empties_the_rest():
    entries = [EntryUse("a", 400, 1.0), EntryUse("b", 400, 2.0)]
    assert evictions(entries, max_bytes=500, incoming=900) == ["a", "b"]


def test_entries_used_at_the_same_time_go_in_a_stable_order():
    entries = [EntryUse("b", 400, 1.0), EntryUse("a", 400, 1.0)]
    assert evictions(entries, max_bytes=500, incoming=0) == ["a"]


def test_a_fill_beyond_max_bytes_evicts_the_least_recently_used_entry(tmp_path):
    now = [100.0]
    cache = SharedCache(tmp_path, max_bytes=2500, clock=lambda: now[0], eviction_grace=5)
    keys = [CacheKey(f"s3://models/m{i}/", "v") for i in range(3)]
    for key in keys:
        now[0] += 10
        cache.get(key, writer(WEIGHTS))
    assert cache.stats.evictions == 1 and not cache.entry(keys[0]).exists()
    now[0] += 10
    cache.get(keys[1], writer(WEIGHTS))  # used: now the most recent
    now[0] += 10
    cache.get(CacheKey("s3://models/m3/", "v"), writer(WEIGHTS))
    assert cache.entry(keys[1]).exists() and not cache.entry(keys[2]).exists()
    assert cache.stats.evictions == 2


def test_an_entry_used_within_the_grace_period_is_kept_even_over_the_limit():
    entries = [EntryUse("old", 400, 1.0), EntryUse("recent", 400, 50.0)]
    assert evictions(entries, max_bytes=100, incoming=0, protected_since=40.0) == ["old"]


def test_a_fill_over_the_limit_keeps_entries_just_used(tmp_path):
    cache = SharedCache(tmp_path, max_bytes=1500)  # the default grace: everything here was just used
    first, second = CacheKey("s3://models/a/", "v"), CacheKey("s3://models/b/", "v")
    cache.get(first, writer(WEIGHTS))
    cache.get(second, writer(WEIGHTS))
    assert cache.entry(first).exists() and cache.stats.evictions == 0
