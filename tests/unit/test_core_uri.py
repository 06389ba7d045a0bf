"""URIs parsed one way for the operator and the trainer: their parts, and the refusal of URIs that name
nothing readable or that would lead out of what they are joined onto."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_core.uri import Uri, UriError, local_path, parse_uri


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("s3://bucket/runs/team/", Uri("s3", "bucket", "runs/team")),
        ("s3://bucket", Uri("s3", "bucket", "")),
        ("s3://bucket/", Uri("s3", "bucket", "")),
        ("pvc://claim/a/b.jsonl", Uri("pvc", "claim", "a/b.jsonl")),
        ("hf://org/name", Uri("hf", "org", "name")),
        ("hf://datasets/org/name@v1/train", Uri("hf", "datasets", "org/name@v1/train")),
        ("file:///data/train.jsonl", Uri("file", "", "/data/train.jsonl")),
        ("s3://bucket/..x/a..", Uri("s3", "bucket", "..x/a..")),
    ],
)
def test_a_uri_parses_into_scheme_authority_and_path(uri, parts):
    assert parse_uri(uri) == parts


@pytest.mark.parametrize(
    ("uri", "text"),
    [("s3://bucket/runs/team/", "s3://bucket/runs/team"), ("s3://bucket", "s3://bucket"), ("file:///x", "file:///x")],
)
def test_a_parsed_uri_writes_back_without_its_trailing_slash(uri, text):
    assert parse_uri(uri).text == text


def test_the_prefix_of_a_path_ends_with_a_slash_and_a_whole_bucket_has_none():
    assert parse_uri("s3://bucket/runs/team").prefix == "runs/team/"
    assert parse_uri("s3://bucket/").prefix == ""


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("gs://bucket/x", "unsupported URI"),
        ("bucket/x", "unsupported URI"),
        ("file://relative/path", "must be absolute"),
        ("s3:///key", "lacks the bucket"),
        ("pvc:///path", "lacks the claim"),
    ],
)
def test_a_uri_of_no_known_form_is_refused_saying_which_form_to_use(uri, says):
    with pytest.raises(UriError, match=says):
        parse_uri(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://../etc",
        "pvc://./x",
        "pvc://claim/../../etc",
        "pvc://claim/a/../../../etc/passwd",
        "s3://bucket//key",
        "s3://bucket/a/./b",
        "s3://bucket/a//",
        "hf://org/..",
        "hf://datasets/org/name/../../other",
    ],
)
def test_a_uri_that_would_leave_its_bucket_or_claim_is_refused_naming_the_segment(uri):
    with pytest.raises(UriError, match=r"has an? ('\.\.?'|empty) segment"):
        parse_uri(uri)


def test_a_refused_uri_is_shown_escaped_and_cut_short():
    hostile = "gs://" + "\x1b[31m" + "x" * 5000
    with pytest.raises(UriError) as raised:
        parse_uri(hostile)
    assert "\x1b" not in str(raised.value) and len(str(raised.value)) < 400


def test_local_paths_are_the_file_path_or_the_claim_under_its_mount_root(tmp_path):
    assert local_path("file:///data/train.jsonl", tmp_path) == Path("/data/train.jsonl")
    assert local_path("pvc://claim/a/b.jsonl", tmp_path) == tmp_path / "claim" / "a" / "b.jsonl"
    assert local_path("pvc://claim/", tmp_path) == tmp_path / "claim"
    assert local_path("s3://bucket/x", tmp_path) is None
