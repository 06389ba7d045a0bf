"""The artifact manifest: per-file sha256 and one digest anyone can recompute with coreutils."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from finetune_core.api import Manifest, ManifestEntry, build_manifest, digest_of, manifest_of_directory


def entry(path: str, content: bytes) -> ManifestEntry:
    return ManifestEntry(path=path, size=len(content), sha256=hashlib.sha256(content).hexdigest())


ENTRIES = [
    entry("adapter_model.safetensors", b"weights"),
    entry("adapter_config.json", b"{}"),
    entry("tokenizer/tokenizer.json", b"tok"),
]


def write_artifact(root: Path) -> None:
    (root / "tokenizer").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(b"weights")
    (root / "adapter_config.json").write_bytes(b"{}")
    (root / "tokenizer" / "tokenizer.json").write_bytes(b"tok")


def test_the_digest_does_not_depend_on_the_order_of_the_files():
    assert digest_of(ENTRIES) == digest_of(list(reversed(ENTRIES)))


def test_the_digest_is_the_sha256_of_sorted_sha256sum_lines():
    lines = "".join(f"{e.sha256}  {e.path}\n" for e in sorted(ENTRIES, key=lambda e: e.path))
    assert digest_of(ENTRIES) == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def test_the_digest_changes_with_any_content_or_name():
    changed_content = [*ENTRIES[:2], entry("tokenizer/tokenizer.json", b"other")]
    renamed = [*ENTRIES[:2], entry("tokenizer/vocab.json", b"tok")]
    assert len({digest_of(ENTRIES), digest_of(changed_content), digest_of(renamed)}) == 3


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_the_digest_matches_what_coreutils_compute(tmp_path):
    write_artifact(tmp_path)
    files = ["adapter_model.safetensors", "tokenizer/tokenizer.json", "adapter_config.json"]
    environment = {**os.environ, "LC_ALL": "C"}
    sums = subprocess.run(
        ["sha256sum", *files], cwd=tmp_path, check=True, capture_output=True, text=True, env=environment
    ).stdout
    ordered = subprocess.run(
        ["sort", "-k2"], input=sums, check=True, capture_output=True, text=True, env=environment
    ).stdout
    expected = hashlib.sha256(ordered.encode()).hexdigest()
    assert manifest_of_directory(tmp_path).digest == f"sha256:{expected}"


def test_a_built_manifest_lists_the_files_sorted_with_their_digest():
    manifest = build_manifest(ENTRIES)
    assert [e.path for e in manifest.files] == sorted(e.path for e in ENTRIES)
    assert manifest.digest == digest_of(ENTRIES)
    assert manifest.size_bytes == len(b"weights") + len(b"{}") + len(b"tok")
    assert manifest.version == 1


def test_the_directory_manifest_covers_every_file_recursively_with_posix_paths(tmp_path):
    write_artifact(tmp_path)
    manifest = manifest_of_directory(tmp_path)
    assert manifest == build_manifest(ENTRIES)


def test_the_directory_manifest_excludes_the_manifest_itself(tmp_path):
    write_artifact(tmp_path)
    before = manifest_of_directory(tmp_path)
    (tmp_path / "manifest.json").write_text(before.model_dump_json(by_alias=True))
    after = manifest_of_directory(tmp_path)
    assert after == before
    assert "manifest.json" not in [e.path for e in after.files]


def test_a_manifest_json_in_a_subdirectory_is_part_of_the_artifact(tmp_path):
    write_artifact(tmp_path)
    (tmp_path / "tokenizer" / "manifest.json").write_text("{}")
    assert "tokenizer/manifest.json" in [e.path for e in manifest_of_directory(tmp_path).files]


def test_a_manifest_round_trips_through_json(tmp_path):
    manifest = build_manifest(ENTRIES)
    assert Manifest.model_validate_json(manifest.model_dump_json(by_alias=True)) == manifest


def test_an_entry_refuses_a_digest_that_is_not_sha256_hex():
    with pytest.raises(ValueError):
        ManifestEntry(path="a", size=1, sha256="not-hex")
