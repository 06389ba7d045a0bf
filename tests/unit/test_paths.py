"""Keys, claim paths and URIs stay below their bucket or claim: one pure check, its CEL twin, every URI field."""

from __future__ import annotations

import re

import pytest
from catalog import edited, valid_job
from finetune_core.api import FineTuneJob, ModelAdapter, format_validation_error
from finetune_core.api.paths import (
    UNSAFE_URI_PATH_CEL_PATTERN,
    UnsafePathError,
    checked_relative,
    normalised_mount_path,
    unsafe_segment,
    uri_path_problem,
)
from pydantic import ValidationError


@pytest.mark.parametrize("relative", ["a", "a/b", "a/b/c.json", ".hidden", "..x", "x..", "...", "a/.b/c", "a b"])
def test_names_that_stay_below_their_directory_are_accepted(relative):
    assert unsafe_segment(relative) is None
    assert checked_relative(relative, "the key") == relative


@pytest.mark.parametrize(
    ("relative", "problem"),
    [
        ("..", "a '..' segment"),
        ("../x", "a '..' segment"),
        ("a/../../etc", "a '..' segment"),
        ("a/..", "a '..' segment"),
        (".", "a '.' segment"),
        ("a/./b", "a '.' segment"),
        ("/etc/passwd", "an empty segment"),
        ("a//b", "an empty segment"),
        ("a/", "an empty segment"),
        ("", "an empty segment"),
    ],
)
def test_names_with_empty_dot_or_dot_dot_segments_are_refused_naming_them(relative, problem):
    assert unsafe_segment(relative).startswith(problem)
    with pytest.raises(UnsafePathError, match=re.escape(f"the key {relative!r} has {problem}")):
        checked_relative(relative, "the key")


URIS = [
    ("s3://bucket", True),
    ("s3://bucket/", True),
    ("s3://bucket/prefix", True),
    ("s3://bucket/prefix/", True),
    ("s3://bucket/a/b/train.jsonl", True),
    ("s3://bucket/.hidden/..x/x..", True),
    ("pvc://claim", True),
    ("pvc://claim/models/llama", True),
    ("hf://Qwen/Qwen2.5-0.5B", True),
    ("hf://datasets/org/name/data/train.jsonl", True),
    ("hf://datasets/org/name@v1.0/data", True),
    ("file:///abs/path", True),
    ("s3://bucket//", False),
    ("s3://bucket//abs", False),
    ("s3://bucket/a//b", False),
    ("s3://bucket/a//", False),
    ("s3://bucket/..", False),
    ("s3://bucket/../other", False),
    ("s3://bucket/prefix/../../x", False),
    ("s3://bucket/a/./b", False),
    ("s3://bucket/.", False),
    ("s3://bucket/a/.", False),
    ("s3://bucket/a/../", False),
    ("pvc://claim/../../etc", False),
    ("pvc://claim/..", False),
    ("pvc://claim//etc", False),
    ("pvc://claim/a/./b", False),
    ("hf://datasets/org/name/../../../etc", False),
    ("hf://datasets/../x", False),
    ("s3://bucket/a\n/../b", False),
]


@pytest.mark.parametrize(("uri", "safe"), URIS)
def test_uri_paths_are_checked_segment_by_segment(uri, safe):
    assert (uri_path_problem(uri) is None) is safe


@pytest.mark.parametrize(("uri", "safe"), URIS)
def test_the_crds_cel_rule_agrees_with_the_python_check(uri, safe):
    # Python's re and the API server's RE2 read this pattern alike: no look-around, no backreferences.
    assert (re.search(UNSAFE_URI_PATH_CEL_PATTERN, uri) is None) is safe


JOB_URI_FIELDS = [
    ("spec.model.uri", {"spec.model.uri": "{uri}"}),
    ("spec.data.train[0].uri", {"spec.data.train": [{"uri": "{uri}"}]}),
    ("spec.data.eval.uri", {"spec.data.eval": {"uri": "{uri}"}}),
    ("spec.data.general.uri", {"spec.data.general": {"uri": "{uri}"}}),
    ("spec.output.uri", {"spec.output": {"uri": "{uri}"}}),
]


def _filled(edits: dict, uri: str) -> dict:
    return {path: _fill(value, uri) for path, value in edits.items()}


def _fill(value, uri):
    if isinstance(value, dict):
        return {key: _fill(item, uri) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, uri) for item in value]
    return uri if value == "{uri}" else value


@pytest.mark.parametrize(("field", "edits"), JOB_URI_FIELDS, ids=[f for f, _ in JOB_URI_FIELDS])
@pytest.mark.parametrize("uri", ["pvc://claim/../../etc", "s3://bucket//abs/key", "s3://bucket/a/./b"])
def test_every_uri_of_a_finetunejob_is_refused_with_unsafe_segments_naming_the_field(field, edits, uri):
    with pytest.raises(ValidationError) as raised:
        FineTuneJob.model_validate(edited(valid_job(), _filled(edits, uri)))
    (message,) = format_validation_error(raised.value)
    assert message.startswith(f"{field}: the URI has"), message
    assert uri not in message  # the value reaches the object's status: it is not echoed


@pytest.mark.parametrize(("field", "edits"), JOB_URI_FIELDS, ids=[f for f, _ in JOB_URI_FIELDS])
def test_every_uri_of_a_finetunejob_accepts_a_prefix_with_a_trailing_slash(field, edits):
    FineTuneJob.model_validate(edited(valid_job(), _filled(edits, "pvc://claim/a/b/")))


def _adapter(base_uri: str, artifact_uri: str) -> dict:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelAdapter",
        "metadata": {"name": "adapter"},
        "spec": {"baseModel": {"uri": base_uri}, "artifact": {"uri": artifact_uri}},
    }


@pytest.mark.parametrize(
    ("field", "base_uri", "artifact_uri"),
    [
        ("spec.baseModel.uri", "pvc://models/../../etc", "s3://out/team/adapter/v1/"),
        ("spec.artifact.uri", "hf://org/model", "pvc://claim/../../var/run/secrets"),
        ("spec.artifact.uri", "hf://org/model", "s3://out//team/adapter"),
    ],
)
def test_every_uri_of_a_modeladapter_is_refused_with_unsafe_segments_naming_the_field(field, base_uri, artifact_uri):
    ModelAdapter.model_validate(_adapter("hf://org/model", "s3://out/team/adapter/v1/"))
    with pytest.raises(ValidationError) as raised:
        ModelAdapter.model_validate(_adapter(base_uri, artifact_uri))
    (message,) = format_validation_error(raised.value)
    assert message.startswith(f"{field}: the URI has"), message


@pytest.mark.parametrize(
    ("path", "normalised"),
    [
        ("/etc//finetune", "/etc/finetune"),
        ("/etc/finetune/.", "/etc/finetune"),
        ("//etc/finetune", "/etc/finetune"),
        ("///etc/./finetune/", "/etc/finetune"),
        ("/", "/"),
        ("/data", "/data"),
    ],
)
def test_mount_paths_are_normalised_like_the_kernel_reads_them(path, normalised):
    assert normalised_mount_path(path) == normalised
