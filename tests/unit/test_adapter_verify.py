"""Verification of stored adapters: the manifest and its files, and what vLLM can load."""

from __future__ import annotations

import hashlib
import json

import pytest
from finetune_core.api import ManifestEntry, ModelAdapterSpec, build_manifest
from finetune_core.api.manifest import MAX_MANIFEST_FILES
from finetune_operator.adapters.verify import (
    ArtifactProblem,
    check_files,
    check_manifest,
    check_serving,
    parse_json,
)

SHA_A, SHA_B = "a" * 64, "b" * 64
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def spec(**changes) -> ModelAdapterSpec:
    base = {
        "baseModel": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct", "servedName": "qwen2.5-7b-instruct"},
        "format": "peft-lora",
        "artifact": {"uri": "s3://adapters/team-a/bot/v1/"},
    }
    return ModelAdapterSpec.model_validate({**base, **changes})


def adapter_config(**changes) -> dict:
    config = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": "hf://Qwen/Qwen2.5-7B-Instruct",
    }
    config.update(changes)
    return config


def manifest_bytes(*entries: tuple[str, int, str]) -> bytes:
    manifest = build_manifest([ManifestEntry(path=p, size=n, sha256=h) for p, n, h in entries])
    return manifest.model_dump_json(by_alias=True).encode()


# -- the manifest and the files ------------------------------------------------------------------


def test_a_missing_manifest_means_the_artifact_is_missing_or_incomplete():
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), None)
    assert raised.value.reason == "ArtifactNotFound"


def test_a_manifest_whose_digest_does_not_match_its_file_list_is_refused():
    tampered = json.loads(manifest_bytes(("a.bin", 3, SHA_A)))
    tampered["files"][0]["sha256"] = SHA_B
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), json.dumps(tampered).encode())
    assert raised.value.reason == "DigestMismatch"


def test_the_spec_digest_must_be_the_manifests():
    raw = manifest_bytes(("a.bin", 3, SHA_A))
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(artifact={"uri": "s3://adapters/x/", "digest": "sha256:" + "0" * 64}), raw)
    assert raised.value.reason == "DigestMismatch" and "spec.artifact.digest" in raised.value.message


def test_a_spec_without_a_digest_takes_the_manifests():
    manifest = check_manifest(spec(), manifest_bytes(("a.bin", 3, SHA_A)))
    assert manifest.digest.startswith("sha256:")


class Stored:
    """Files as a store reports them (path: (size, sha256)), with a record of what was hashed."""

    def __init__(self, **files: tuple[int | None, str]):
        self.files = {path.replace("_", "."): found for path, found in files.items()}
        self.hashed: list[tuple[str, int]] = []

    def size(self, path: str) -> int | None:
        return self.files.get(path, (None, ""))[0]

    def sha256(self, path: str, size: int) -> str:
        self.hashed.append((path, size))
        return self.files[path][1]


def test_every_file_must_be_present_with_its_size_and_hash():
    manifest = check_manifest(spec(), manifest_bytes(("a.bin", 3, SHA_A), ("b.bin", 5, SHA_B)))
    stored = Stored(a_bin=(3, SHA_A), b_bin=(5, SHA_B))
    assert "2 files verified" in check_files(manifest, stored.size, stored.sha256)
    for stored, reason in [
        (Stored(a_bin=(3, SHA_A)), "FileMissing"),
        (Stored(a_bin=(3, SHA_A), b_bin=(None, "")), "FileMissing"),
        (Stored(a_bin=(4, SHA_A), b_bin=(5, SHA_B)), "FileCorrupt"),
        (Stored(a_bin=(3, SHA_B), b_bin=(5, SHA_B)), "FileCorrupt"),
    ]:
        with pytest.raises(ArtifactProblem) as raised:
            check_files(manifest, stored.size, stored.sha256)
        assert raised.value.reason == reason


def test_a_file_of_another_size_than_the_manifests_is_never_hashed():
    manifest = check_manifest(spec(), manifest_bytes(("huge.bin", 1, SHA_A)))
    stored = Stored(huge_bin=(50 << 30, SHA_A))
    with pytest.raises(ArtifactProblem) as raised:
        check_files(manifest, stored.size, stored.sha256)
    assert raised.value.reason == "FileCorrupt" and "has 53687091200 bytes, the manifest says 1" in raised.value.message
    assert stored.hashed == []


def test_a_hash_is_asked_for_exactly_the_size_the_manifest_gives():
    manifest = check_manifest(spec(), manifest_bytes(("a.bin", 3, SHA_A)))
    stored = Stored(a_bin=(3, SHA_A))
    check_files(manifest, stored.size, stored.sha256)
    assert stored.hashed == [("a.bin", 3)]


def test_files_too_large_to_hash_are_checked_by_size_and_said_so():
    manifest = check_manifest(spec(), manifest_bytes(("model.safetensors", 10, SHA_A)))
    stored = Stored(model_safetensors=(10, SHA_A))
    summary = check_files(manifest, stored.size, None)
    assert "0 hashed" in summary and stored.hashed == []


# -- what a manifest may say ---------------------------------------------------------------------


def raw_manifest(paths: list[str], size: int = 1) -> bytes:
    """A manifest as a tenant could write it: paths not checked, its digest right for them."""
    lines = "".join(f"{SHA_A}  {path}\n" for path in sorted(paths))
    files = [{"path": path, "size": size, "sha256": SHA_A} for path in paths]
    return json.dumps({"files": files, "digest": "sha256:" + hashlib.sha256(lines.encode()).hexdigest()}).encode()


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "/var/run/secrets/token", "a//b", "a/./b", "a/", ".", "", "a/../../b", "x\0y", "n" * 256],
)
def test_manifest_paths_must_be_plain_relative_names(path):
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), raw_manifest([path]))
    assert raised.value.reason == "ManifestInvalid" and "files[0].path" in raised.value.message


def test_a_path_in_the_manifest_is_not_echoed_when_refused():
    secret_looking = "../" + "s3cr3t-" * 10
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), raw_manifest([secret_looking]))
    assert "s3cr3t" not in raised.value.message


def test_paths_longer_than_the_bound_are_refused():
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), raw_manifest(["/".join(["d" * 200] * 6)]))
    assert raised.value.reason == "ManifestInvalid" and "1024" in raised.value.message


def test_plain_nested_paths_are_accepted():
    manifest = check_manifest(spec(), raw_manifest(["adapter_model.safetensors", "tokenizer/tokenizer.json"]))
    assert [entry.path for entry in manifest.files] == ["adapter_model.safetensors", "tokenizer/tokenizer.json"]


def test_a_manifest_of_more_files_than_the_bound_is_too_many_files():
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), raw_manifest([f"f{i}" for i in range(MAX_MANIFEST_FILES + 1)]))
    assert raised.value.reason == "TooManyFiles" and str(MAX_MANIFEST_FILES) in raised.value.message


def test_a_manifest_that_is_not_json_says_so_without_its_content():
    with pytest.raises(ArtifactProblem) as raised:
        check_manifest(spec(), b"PRIVATE KEY material, not json")
    assert raised.value.reason == "ManifestInvalid" and "PRIVATE" not in raised.value.message


def test_a_json_file_that_does_not_parse_is_a_problem_naming_it():
    with pytest.raises(ArtifactProblem) as raised:
        parse_json(b"{not json", "adapter_config.json")
    assert "adapter_config.json" in raised.value.message


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00garbage", b"[" * 100_000])
def test_json_that_is_not_utf8_or_nested_too_deep_is_a_problem_not_a_crash(raw):
    with pytest.raises(ArtifactProblem) as raised:
        parse_json(raw, "base_model_config.json")
    assert raised.value.reason == "ManifestInvalid"


# -- what vLLM can load ----------------------------------------------------------------------------


def test_a_plain_lora_adapter_on_a_known_architecture_is_servable():
    result = check_serving(spec(), adapter_config(), LLAMA)
    assert result.problems == []
    assert result.rank == 16 and result.required_max_lora_rank == 16
    assert result.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"bias": "all"}, "bias"),
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"r": 1024}, "above vLLM's largest"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"target_modules": ["q_proj", "attn.c_attn"]}, "do not exist in llama"),
        ({"base_model_name_or_path": "hf://meta-llama/Llama-3.1-8B"}, "base_model_name_or_path"),
    ],
)
def test_what_vllm_cannot_load_is_named(change, words):
    result = check_serving(spec(), adapter_config(**change), LLAMA)
    assert any(words in problem for problem in result.problems), result.problems


def test_a_rank_different_from_the_spec_is_a_problem():
    result = check_serving(spec(lora={"rank": 8}), adapter_config(r=16), LLAMA)
    assert any("spec.lora.rank is 8" in problem for problem in result.problems)


@pytest.mark.parametrize(
    "recorded", ["Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct", "hf://Qwen/Qwen2.5-7B-Instruct/"]
)
def test_the_base_may_be_recorded_as_the_uri_the_hub_id_or_the_served_name(recorded):
    assert check_serving(spec(), adapter_config(base_model_name_or_path=recorded), LLAMA).problems == []


def test_full_module_paths_are_reduced_to_module_names():
    paths = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    result = check_serving(spec(), adapter_config(target_modules=paths), LLAMA)
    assert result.target_modules == ["down_proj", "q_proj"] and result.problems == []


def test_target_modules_of_an_unknown_architecture_are_not_guessed_at():
    result = check_serving(spec(), adapter_config(target_modules=["c_attn"]), {"model_type": "exotic"})
    assert result.problems == []
    assert any("exotic" in note for note in result.notes)


def test_without_the_base_config_the_target_modules_are_not_checked_and_that_is_said():
    result = check_serving(spec(), adapter_config(target_modules=["anything"]), None)
    assert result.problems == [] and result.notes


def test_a_lora_artifact_needs_its_adapter_config():
    assert check_serving(spec(), None, LLAMA).problems == ["no adapter_config.json in the artifact"]


def test_a_full_model_needs_no_adapter_config():
    assert check_serving(spec(format="full-model"), None, None).problems == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"target_modules": [1, 2]}, "target_modules is [1, 2], not a module name or a list of them"),
        ({"target_modules": 5}, "target_modules is 5"),
        ({"base_model_name_or_path": ["a"]}, "base_model_name_or_path is ['a'], not a string"),
    ],
)
def test_odd_types_in_a_crafted_adapter_config_are_problems_not_crashes(changes, problem):
    assert problem in "; ".join(check_serving(spec(), adapter_config(**changes), LLAMA).problems)


def test_an_odd_model_type_leaves_the_target_modules_unchecked():
    result = check_serving(spec(), adapter_config(), {"model_type": ["llama"]})
    assert not result.problems and "unknown: target modules not checked" in result.notes[0]


def test_long_values_of_a_crafted_adapter_config_are_described_not_echoed():
    result = check_serving(spec(), adapter_config(bias="x" * 10_000, peft_type=["P"] * 5000), LLAMA)
    text = "; ".join(result.problems)
    assert "bias is a str of 10000 characters" in text and "peft_type is a list of 5000 items" in text
    assert len(text) < 400
