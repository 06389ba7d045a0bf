"""The token store: what training reads from it is exactly what tokenizing in memory gives.

Every format and objective goes through ``load_data`` twice, without a store and with one built
from small chunks by two worker processes, and the examples (ids, labels, sources), splits,
mixes and statistics (invalid rows with file:line included) must be identical. Then the index
arithmetic, and what a broken or poisoned store does.
"""

from __future__ import annotations

import gzip
import json
import operator
import os
import random
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from finetune_core.api.manifest import file_sha256
from finetune_trainer.batching import plan_steps
from finetune_trainer.data import load_data, store_build, store_cache
from finetune_trainer.data.store import FILES, StoreCorrupt, TokenStore, write_manifest
from finetune_trainer.data.store_cache import STORES_DIR
from finetune_trainer.data.views import Concat, Listed, Subset, expand_ranges, measure

pytestmark = pytest.mark.trainer


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of a few rows each: every test's sources are cut into several, built by two workers."""
    monkeypatch.setattr(store_build, "CHUNK_BYTES", 300)
    # Where open_or_build looks it up (store_cache imported the name): patching store_build's alone left the
    # machine's core count in charge, so a one-core runner built every store in-process, untested by a pool.
    monkeypatch.setattr(store_cache, "worker_count", lambda: 2)


def chat(i: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    }


def rows_of(kind: str) -> list:
    rows: list = []
    for i in range(40):
        if kind == "messages":
            row = chat(i)
            if i % 7 == 3:  # a turn left out of the loss, and a tool call
                row["messages"] = [
                    {"role": "user", "content": f"Weather {i}?"},
                    {"role": "assistant", "content": "Checking.", "weight": 0},
                    {"role": "user", "content": "Well?"},
                    {"role": "assistant", "content": f"Sunny {i}."},
                ]
            rows.append(row)
        elif kind == "prompt-completion":
            rows.append({"prompt": f"Q{i}: " + "why " * (i % 9), "completion": f" because {i}" * (1 + i % 3)})
        elif kind == "alpaca":
            rows.append({"instruction": f"Say {i}", "input": "politely" if i % 2 else "", "output": f"{i}, please."})
        elif kind == "sharegpt":
            rows.append(
                {"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}"}]}
            )
        elif kind == "text":  # long documents become several maxSeqLength chunks
            rows.append({"text": f"Document {i}. " + "the quick brown fox jumps over the lazy dog " * (i % 11)})
        elif kind == "preference":
            rows.append({"prompt": f"Q{i}", "chosen": f" good answer {i}", "rejected": f" bad {i}"})
        elif kind == "preference-chat":
            rows.append(
                {
                    "prompt": [{"role": "user", "content": f"Q{i}?"}],
                    "chosen": [{"role": "assistant", "content": f"Good {i}."}],
                    "rejected": [{"role": "assistant", "content": f"Bad {i}."}],
                }
            )
    # Bad rows in several chunks: counted and reported with their file:line by either path.
    rows[5] = '{"broken": '
    rows[23] = {"unrelated": True}
    rows[31] = b"\xff not utf-8".decode("latin-1")
    return rows


def write_rows(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    data = data.replace(b"\xc3\xbf not utf-8", b"\xff not utf-8")  # a line that is not valid UTF-8
    path.write_bytes(data)
    return path


def flat(examples) -> list:
    return [_plain(example) for example in examples]


def _plain(example):
    if hasattr(example, "chosen"):
        return (_plain(example.chosen), _plain(example.rejected), example.source)
    return (list(example.input_ids), list(example.labels), example.source)


def assert_same_bundles(memory, stored) -> None:
    assert flat(stored.train) == flat(memory.train)
    assert flat(stored.eval) == flat(memory.eval)
    assert flat(stored.general) == flat(memory.general)
    assert stored.train_stats == memory.train_stats
    assert stored.eval_stats == memory.eval_stats
    assert stored.general_stats == memory.general_stats
    assert stored.mix_counts == memory.mix_counts
    for epoch in (0, 1):
        assert flat(stored.pool[i] for i in stored.epoch_mix(epoch)) == flat(
            memory.pool[i] for i in memory.epoch_mix(epoch)
        )
    assert measure(stored.train) == measure(memory.train)


FORMATS = ["messages", "prompt-completion", "alpaca", "sharegpt", "text", "preference", "preference-chat"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_back_from_the_store_as_tokenized_in_memory(kind, tmp_path, make_config, tokenizer, resolve):
    path = write_rows(tmp_path / "train.jsonl", rows_of(kind))
    objective = "dpo" if kind.startswith("preference") else ("pretrain" if kind == "text" else "sft")
    config = make_config([path], objective=objective, training={"maxSeqLength": 24}, maxInvalidFraction=0.2)

    memory = load_data(config, tokenizer, resolve)
    stored = load_data(config, tokenizer, resolve, store_root=tmp_path / "cache")

    assert_same_bundles(memory, stored)
    assert len(memory.train_stats[0].invalid_examples) == 3
    (store_dir,) = (tmp_path / "cache" / STORES_DIR).iterdir()
    assert ("mask.bin" in TokenStore(store_dir).manifest["files"]) == (kind != "text")


def test_mixed_sources_directories_eval_and_general_sets_match(
    tmp_path, make_config, tokenizer, resolve, write_parquet
):
    task = tmp_path / "task"
    write_rows(task / "a.jsonl", rows_of("messages")[:20])
    write_rows(tmp_path / "task" / "b.jsonl", rows_of("messages")[20:])
    (tmp_path / "task" / "empty.jsonl").write_bytes(b"")  # an empty file among many: an invalid row
    with gzip.open(tmp_path / "task" / "c.jsonl.gz", "wt") as stream:
        stream.write(json.dumps(chat(99)) + "\n")
    replay = write_rows(tmp_path / "replay.jsonl", [{"text": f"Replay {i} " * (1 + i % 5)} for i in range(300)])
    general = write_parquet("general.parquet", [{"text": f"General {i}."} for i in range(30)])
    config = make_config(
        [{"uri": f"file://{task}", "weight": 0.7}, {"uri": f"file://{replay}", "format": "text", "weight": 0.3}],
        general={"uri": f"file://{general}", "format": "text"},
        evaluation={"maxSamples": 12},
        training={"maxSeqLength": 40},
        maxInvalidFraction=0.2,
    )

    memory = load_data(config, tokenizer, resolve)
    stored = load_data(config, tokenizer, resolve, store_root=tmp_path / "cache")

    assert_same_bundles(memory, stored)
    assert any("empty.jsonl:1: empty file" in line for line in stored.train_stats[0].invalid_examples)
    assert len(stored.general) > 0 and len(stored.eval) > 0


def test_an_eval_uri_is_read_through_its_own_store(tmp_path, make_config, tokenizer, resolve):
    train = write_rows(tmp_path / "train.jsonl", rows_of("prompt-completion"))
    held = write_rows(tmp_path / "eval.jsonl", rows_of("prompt-completion")[:15])
    config = make_config([train], eval={"uri": f"file://{held}"}, maxInvalidFraction=0.2)

    assert_same_bundles(
        load_data(config, tokenizer, resolve), load_data(config, tokenizer, resolve, store_root=tmp_path)
    )
    assert len(list((tmp_path / STORES_DIR).iterdir())) == 2


def test_too_many_invalid_rows_fail_the_same_way(tmp_path, make_config, tokenizer, resolve):
    from finetune_trainer.data import DataError

    path = write_rows(tmp_path / "train.jsonl", rows_of("messages"))
    config = make_config([path], maxInvalidFraction=0.05)
    with pytest.raises(DataError) as memory:
        load_data(config, tokenizer, resolve)
    with pytest.raises(DataError) as stored:
        load_data(config, tokenizer, resolve, store_root=tmp_path)
    assert str(stored.value) == str(memory.value)


def test_an_unusable_chat_template_fails_the_same_way(tmp_path, make_config, tokenizer, resolve):
    from finetune_trainer.data import ConfigError

    # Renders earlier turns differently depending on what follows: found while tokenizing, in the workers.
    unstable = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    path = write_rows(tmp_path / "train.jsonl", [chat(i) for i in range(40)])
    config = make_config([path], chatTemplate=unstable)
    with pytest.raises(ConfigError) as memory:
        load_data(config, tokenizer, resolve)
    with pytest.raises(ConfigError) as stored:
        load_data(config, tokenizer, resolve, store_root=tmp_path / "cache")
    assert str(stored.value) == str(memory.value)


def build_text_store(target: Path, path: Path, tokenizer, workers: int) -> None:
    from finetune_trainer.data.tokenize import ExampleBuilder

    store_build.build_store(
        target,
        key={"tokenizer": {"vocab_size": len(tokenizer)}},
        uri="file://train.jsonl",
        local_path=path,
        format_name="text",
        builder=ExampleBuilder(tokenizer, max_seq_length=16),
        pairs=False,
        vocab_size=len(tokenizer),
        workers=workers,
    )


def test_parallel_and_single_process_builds_write_the_same_files(tmp_path, tokenizer):
    path = write_rows(tmp_path / "train.jsonl", rows_of("text"))
    checksums = []
    for workers in (1, 2):
        build_text_store(tmp_path / f"store-{workers}", path, tokenizer, workers)
        checksums.append(TokenStore(tmp_path / f"store-{workers}").manifest["files"])
    assert checksums[0] == checksums[1]
    assert len(store_build.chunks_of(path, "x", store_build.CHUNK_BYTES)) > 2


def test_builds_under_the_trainers_stop_handler_end_and_leave_no_worker(tmp_path, tokenizer):
    """The trainer builds under its StopRequest (SIGTERM and SIGINT only set a flag). Forked workers inherited
    it, so Pool.terminate() could not end them and a build could hang at its very end; the pool now ends
    through its sentinels, and workers keep SIGTERM's default for terminate() after an error."""
    from finetune_trainer.signals import StopRequest

    path = write_rows(tmp_path / "train.jsonl", rows_of("text"))
    built: list[int] = []
    others = {child.pid for child in psutil.Process().children()}  # the suite's control plane, say

    def build_many() -> None:
        for number in range(20):
            build_text_store(tmp_path / f"store-{number}", path, tokenizer, workers=2)
            built.append(number)

    with StopRequest.installed():  # process-wide handlers: the builds' forked workers inherit them
        builder = threading.Thread(target=build_many, daemon=True)
        builder.start()
        builder.join(timeout=180)
    assert len(built) == 20, f"build {len(built)} of 20 never ended"
    assert [child for child in psutil.Process().children() if child.pid not in others] == []


def test_an_etag_beside_a_local_file_is_not_taken_as_its_version(tmp_path, tokenizer):
    """Only an S3 download's own sidecar names a version: one a tenant puts beside a pvc:// or file:// file
    would otherwise keep a store for bytes that changed under it."""
    from finetune_trainer.data.tokenize import ExampleBuilder
    from finetune_trainer.storage import etag_sidecar

    path = write_rows(tmp_path / "train.jsonl", rows_of("text"))
    etag_sidecar(path).write_text('"always-the-same"')

    def key() -> dict:
        builder = ExampleBuilder(tokenizer, max_seq_length=16)
        facts = {"format_name": "text", "pairs": False, "tokenizer": tokenizer, "builder": builder}
        return store_cache.store_key(
            uri=f"file://{path}", local_path=path, **facts, max_seq_length=16, overlong="truncate"
        )

    before = key()
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # rewritten in place
    assert key()["files"] != before["files"]


def test_a_chunk_reports_at_most_ten_invalid_rows_however_many_it_has(tmp_path, tokenizer):
    """What a worker sends back is bounded: a source of millions of bad lines must not ship them all."""
    from finetune_trainer.data.sources import MAX_INVALID_EXAMPLES
    from finetune_trainer.data.tokenize import ExampleBuilder

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"not json\n" * 500 + json.dumps(chat(1)).encode() + b"\n")
    plan = store_build.BuildPlan("file://bad.jsonl", "messages", False, True, "<u2", tmp_path)
    (result,) = store_build._run(
        plan, ExampleBuilder(tokenizer, max_seq_length=64), store_build.chunks_of(path, "x", 1 << 20), 1
    )

    assert result.stats.invalid_rows == 500
    assert len(result.invalid) == MAX_INVALID_EXAMPLES
    assert result.invalid[0] == (1, "malformed JSON: Expecting value (column 1)")


def test_the_first_ten_invalid_rows_of_many_chunks_are_those_read_in_memory(tmp_path, make_config, tokenizer, resolve):
    from finetune_trainer.data import DataError

    rows = [chat(i) if i % 4 else '{"broken": ' for i in range(120)]  # a bad row in about every chunk
    config = make_config([write_rows(tmp_path / "train.jsonl", rows)], maxInvalidFraction=0.1)
    with pytest.raises(DataError) as memory:
        load_data(config, tokenizer, resolve)
    with pytest.raises(DataError) as stored:
        load_data(config, tokenizer, resolve, store_root=tmp_path / "cache")

    assert str(stored.value) == str(memory.value)
    assert stored.value.origins == memory.value.origins and len(memory.value.origins) == 10


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "800000 100000\n"}, 8),
        ({"cpu.max": "250000 100000\n"}, 3),  # 2.5 cores: the third is partly ours
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2-unlimited", "v2-8", "v2-2.5", "v1-1", "v1-unlimited", "none"],
)
def test_workers_stay_within_the_pods_cpu_limit(files, limit, tmp_path):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert store_build.cgroup_cpu_limit(tmp_path) == limit
    cores = len(os.sched_getaffinity(0))
    assert store_build.worker_count(tmp_path) == (min(cores, limit) if limit else cores)


def test_a_one_cpu_pod_on_a_many_core_node_builds_with_one_worker(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert store_build.worker_count(tmp_path) == 1


# ---------------------------------------------------------------------------------------------
# reuse, corruption, poisoning


def _stored_bundle(tmp_path, make_config, tokenizer, resolve):
    path = tmp_path / "train.jsonl"
    if not path.exists():
        write_rows(path, rows_of("messages"))
    config = make_config([path], maxInvalidFraction=0.2)
    return load_data(config, tokenizer, resolve, store_root=tmp_path / "cache")


def _store_dir(tmp_path: Path) -> Path:
    (directory,) = (tmp_path / "cache" / STORES_DIR).iterdir()
    return directory


def test_a_second_run_reuses_the_store(tmp_path, make_config, tokenizer, resolve, monkeypatch):
    first = _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    built = (_store_dir(tmp_path) / "ids.bin").stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("the store was built again")

    monkeypatch.setattr("finetune_trainer.data.store_cache.build_store", refuse)
    second = _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    assert flat(second.train) == flat(first.train)
    assert (_store_dir(tmp_path) / "ids.bin").stat().st_mtime_ns == built


def test_changed_data_builds_a_new_store(tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    write_rows(tmp_path / "train.jsonl", rows_of("messages")[:30])
    bundle = _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    assert bundle.train_stats[0].rows == 30
    assert len(list((tmp_path / "cache" / STORES_DIR).iterdir())) == 2


@pytest.mark.parametrize("name", ["ids.bin", "mask.bin", "seq_offsets.bin", "row_offsets.bin", "manifest.json"])
def test_a_corrupted_store_is_detected_and_rebuilt(name, tmp_path, make_config, tokenizer, resolve):
    expected = flat(_stored_bundle(tmp_path, make_config, tokenizer, resolve).train)
    path = _store_dir(tmp_path) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        TokenStore(_store_dir(tmp_path))

    again = _stored_bundle(tmp_path, make_config, tokenizer, resolve)

    assert flat(again.train) == expected
    TokenStore(_store_dir(tmp_path))  # sound again


def test_token_files_are_read_by_position_never_mapped(tmp_path, make_config, tokenizer, resolve):
    # Mapped, each example read would map the cached pages around it too: resident memory growing with the corpus.
    bundle = _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    expected = flat(bundle.train)
    maps = Path("/proc/self/maps").read_text()
    assert "seq_offsets.bin" in maps  # the index files are mapped (this test sees the process's mappings)
    assert "ids.bin" not in maps and "mask.bin" not in maps
    assert flat(_stored_bundle(tmp_path, make_config, tokenizer, resolve).train) == expected


def test_a_token_file_cut_short_after_the_open_is_refused_when_read(tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    store = TokenStore(_store_dir(tmp_path))
    last = len(store.seq_offsets) - 2
    store.sequence(last, 0)
    with (_store_dir(tmp_path) / "ids.bin").open("r+b") as ids:
        ids.truncate(int(store.seq_offsets[last]) * store.ids.dtype.itemsize)
    with pytest.raises(StoreCorrupt, match="shorter than when it was opened"):
        store.sequence(last, 0)


def _poison(directory: Path, name: str, values: np.ndarray) -> None:
    """Rewrite a file and its checksum, as someone able to write the store could: checksums alone do not help."""
    values.tofile(directory / name)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": (directory / name).stat().st_size, "sha256": file_sha256(directory / name)}
    write_manifest(directory, manifest)


def test_offsets_out_of_bounds_are_refused_even_with_matching_checksums(tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    directory = _store_dir(tmp_path)
    offsets = np.fromfile(directory / "seq_offsets.bin", dtype=np.int64)
    offsets[3] = offsets[-1] + 1000  # past the end of ids.bin
    _poison(directory, "seq_offsets.bin", offsets)
    with pytest.raises(StoreCorrupt, match="out of bounds"):
        TokenStore(directory)


def test_token_ids_past_the_vocabulary_are_refused(tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    directory = _store_dir(tmp_path)
    manifest = TokenStore(directory).manifest
    ids = np.fromfile(directory / "ids.bin", dtype=np.dtype(manifest["id_dtype"]))
    ids[0] = len(tokenizer)
    _poison(directory, "ids.bin", ids)
    with pytest.raises(StoreCorrupt, match="vocabulary"):
        TokenStore(directory)


def _signed_negative_ids(directory: Path, manifest: dict) -> None:
    ids = np.fromfile(directory / "ids.bin", dtype=np.dtype(manifest["id_dtype"])).astype(np.int16)
    ids[0] = -5  # an embedding index no vocabulary has: below it, not past it
    ids.tofile(directory / "ids.bin")
    manifest["id_dtype"] = np.dtype(np.int16).str
    manifest["files"]["ids.bin"] = {"bytes": ids.nbytes, "sha256": file_sha256(directory / "ids.bin")}


def _endless_file(directory: Path, manifest: dict) -> None:
    (directory / "seq_trained.bin").unlink()
    (directory / "seq_trained.bin").symlink_to("/dev/zero")  # stats as 0 bytes; hashing it would never end
    manifest["files"]["seq_trained.bin"]["bytes"] = 0


def _unchecked_file(directory: Path, manifest: dict) -> None:
    trained = np.fromfile(directory / "seq_trained.bin", dtype=np.int32)
    trained[1] -= 1  # a changed file (within bounds), and its checksum left out of the manifest
    trained.tofile(directory / "seq_trained.bin")
    del manifest["files"]["seq_trained.bin"]


@pytest.mark.parametrize(
    "forge",
    [
        _signed_negative_ids,
        _endless_file,
        _unchecked_file,
        lambda directory, manifest: manifest["counts"].pop("rows"),
        lambda directory, manifest: manifest["counts"].update(tokens=-1),
        lambda directory, manifest: manifest["stats"].update(unknown=1),
        lambda directory, manifest: manifest["stats"].update(invalid_examples=["x"] * 5000),
        lambda directory, manifest: manifest.update(has_mask="yes"),
    ],
    ids=[
        "signed-ids",
        "device-file",
        "file-left-unchecked",
        "no-row-count",
        "negative-count",
        "odd-stats",
        "long-stats",
        "odd-flag",
    ],
)
def test_a_forged_manifest_with_a_valid_seal_is_refused_and_rebuilt(forge, tmp_path, make_config, tokenizer, resolve):
    """The seal is a checksum anyone able to write the store can recompute: the manifest's shape is checked too."""
    expected = flat(_stored_bundle(tmp_path, make_config, tokenizer, resolve).train)
    directory = _store_dir(tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    forge(directory, manifest)
    write_manifest(directory, manifest)
    with pytest.raises(StoreCorrupt):
        TokenStore(directory)

    assert flat(_stored_bundle(tmp_path, make_config, tokenizer, resolve).train) == expected
    TokenStore(_store_dir(tmp_path))  # rebuilt, sound


@pytest.mark.parametrize("target", ["/dev/zero", "big"])
def test_a_manifest_is_read_only_up_to_its_bound(target, tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    manifest = _store_dir(tmp_path) / "manifest.json"
    manifest.unlink()
    if target == "big":
        manifest.write_text(" " * (2 << 20) + "{}")
    else:  # a stat says 0 bytes; reading it to its end would never end
        manifest.symlink_to(target)
    with pytest.raises(StoreCorrupt, match="too large"):
        TokenStore(_store_dir(tmp_path))


def test_a_store_built_for_another_key_is_not_used(tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    directory = _store_dir(tmp_path)
    key = dict(TokenStore(directory).manifest["key"], max_seq_length=1)
    with pytest.raises(StoreCorrupt, match="another key"):
        TokenStore(directory, expected_key=key)


def test_manifest_lists_every_file_with_its_checksum(tmp_path, make_config, tokenizer, resolve):
    _stored_bundle(tmp_path, make_config, tokenizer, resolve)
    directory = _store_dir(tmp_path)
    files = TokenStore(directory).manifest["files"]
    assert set(files) == set(FILES)
    for name, facts in files.items():
        assert facts["sha256"] == file_sha256(directory / name)
    assert not [path for path in directory.iterdir() if path.name not in {*FILES, "manifest.json"}]


# ---------------------------------------------------------------------------------------------
# index and mixing arithmetic


def test_expand_ranges_lists_every_position_of_the_ranges_in_order():
    starts, ends = np.array([3, 10, 10, 0]), np.array([5, 10, 13, 2])
    assert expand_ranges(starts, ends).tolist() == [3, 4, 10, 11, 12, 0, 1]
    assert expand_ranges(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)).tolist() == []


def test_views_index_and_measure_like_the_lists_they_stand_for(tokenizer):
    from finetune_trainer.data.types import IGNORE_INDEX, Example

    rng = random.Random(0)
    examples = [
        Example([rng.randrange(100) for _ in range(n)], [IGNORE_INDEX] + [1] * (n - 1), source=n % 2)
        for n in (rng.randrange(2, 40) for _ in range(60))
    ]
    parts = [Listed(examples[:25]), Listed(examples[25:])]
    joined = Concat(parts, pairs=False)
    positions = [59, 0, 24, 25, 7, 7]
    subset = Subset(joined, positions)
    assert list(joined) == examples
    one_part = Concat(parts[:1], pairs=False).measure_arrays()
    assert all(map(operator.is_, one_part, parts[0].measure_arrays()))  # the part's own arrays, not a copy
    assert list(subset) == [examples[i] for i in positions]
    assert measure(subset) == measure([examples[i] for i in positions])
    plan = plan_steps(subset, micro_batch_tokens=64, batch_tokens=128, packing=True, seed=0, epoch=0)
    assert plan == plan_steps(
        [examples[i] for i in positions], micro_batch_tokens=64, batch_tokens=128, packing=True, seed=0, epoch=0
    )
