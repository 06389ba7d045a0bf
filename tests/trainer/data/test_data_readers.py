"""Reading sources: every supported file type, directories, and the origin every row carries."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from finetune_trainer.data import DataError
from finetune_trainer.data.readers import RawRow, read_source

URI = "s3://bucket/train"


def rows_of(path: Path, uri: str = URI) -> list[RawRow]:
    return list(read_source(path, uri))


def test_jsonl_rows_carry_their_one_based_line_and_blank_lines_are_not_rows(write_jsonl):
    path = write_jsonl("a.jsonl", [{"text": "one"}, "", {"text": "three"}])

    rows = rows_of(path, "s3://bucket/a.jsonl")

    assert [(row.origin, row.value) for row in rows] == [
        ("s3://bucket/a.jsonl:1", {"text": "one"}),
        ("s3://bucket/a.jsonl:3", {"text": "three"}),
    ]


def test_malformed_json_line_becomes_a_row_with_the_reason(write_jsonl):
    path = write_jsonl("a.jsonl", [{"text": "ok"}, '{"text": "unterminated'])

    bad = rows_of(path, "a.jsonl")[1]

    assert bad.origin == "a.jsonl:2"
    assert bad.value is None
    assert bad.error.startswith("malformed JSON: Unterminated string")


def test_a_line_that_is_not_utf8_is_one_invalid_row(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')

    rows = rows_of(path, "a.jsonl")

    assert rows[0].error is None
    assert (rows[1].origin, rows[1].error) == ("a.jsonl:2", "not valid UTF-8 (byte 10)")


def test_json_list_rows_are_numbered_by_their_zero_based_index(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))

    assert [row.origin for row in rows_of(path, "a.json")] == ["a.json:row 0", "a.json:row 1"]


def test_json_object_with_rows_under_data_is_read_like_a_list(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"version": 2, "data": [{"text": "a"}]}))

    assert [row.value for row in rows_of(path)] == [{"text": "a"}]


def test_a_malformed_json_file_loses_all_its_rows_so_it_stops_the_job_at_the_line_of_the_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"text": "a"},\n{"text" "b"}\n]')

    with pytest.raises(DataError, match=r"^a\.json:3: malformed JSON: Expecting ':' delimiter.*every row of the file"):
        rows_of(path, "a.json")


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    for name, content in (("a.jsonl", '{"text": "hello"}\n'), ("b.json", '[{"text": "hello"}]'), ("c.txt", "hello")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + content.encode())
        (row,) = rows_of(path, name)
        assert row.error is None and row.value == {"text": "hello"}, name


def test_a_csv_field_longer_than_pythons_default_limit_is_read(write_csv):
    document = "word " * 40_000  # 200,000 characters
    path = write_csv("long.csv", ["text"], [[document], ["short"]])

    rows = rows_of(path, "long.csv")

    assert [row.value["text"] for row in rows] == [document, "short"] and all(row.error is None for row in rows)


def test_a_csv_that_is_not_utf8_stops_the_job_naming_the_file(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text\ncaf\u00e9\n".encode("cp1252"))

    with pytest.raises(DataError, match=r"^excel\.csv: not valid UTF-8.*export it as UTF-8"):
        rows_of(path, "excel.csv")


def test_csv_rows_carry_the_line_they_start_on_counting_the_header(write_csv):
    path = write_csv("a.csv", ["prompt", "completion"], [["p1", "c1"], ["multi\nline", "c2"], ["p3", "c3"]])

    rows = rows_of(path, "a.csv")

    assert [row.origin for row in rows] == ["a.csv:2", "a.csv:3", "a.csv:5"]
    assert rows[1].value == {"prompt": "multi\nline", "completion": "c2"}


def test_csv_row_with_another_field_count_than_the_header_is_invalid(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("prompt,completion\np,c\nonly-one\n")

    bad = rows_of(path, "a.csv")[1]

    assert (bad.origin, bad.error) == ("a.csv:3", "expected 2 fields as in the header, found 1")


def test_parquet_rows_are_numbered_by_their_zero_based_index(write_parquet):
    path = write_parquet("a.parquet", [{"text": "a"}, {"text": "b"}])

    rows = rows_of(path, "a.parquet")

    assert [(row.origin, row.value) for row in rows] == [
        ("a.parquet:row 0", {"text": "a"}),
        ("a.parquet:row 1", {"text": "b"}),
    ]


def test_damaged_parquet_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_bytes(b"not parquet at all")

    with pytest.raises(DataError, match=r"^s3://bucket/a\.parquet: cannot read this Parquet file"):
        rows_of(path, "s3://bucket/a.parquet")


def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Chapter one.\n\nChapter two.\n")

    assert [(row.origin, row.value) for row in rows_of(path, "book.txt")] == [
        ("book.txt:1", {"text": "Chapter one.\n\nChapter two.\n"})
    ]


def test_gzip_compressed_jsonl_is_read(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt") as stream:
        stream.write('{"text": "zipped"}\n')

    assert [row.value for row in rows_of(path)] == [{"text": "zipped"}]


def test_directory_is_read_recursively_in_sorted_order_with_origins_under_the_uri(tmp_path, write_jsonl):
    write_jsonl("data/b.jsonl", [{"text": "b"}])
    write_jsonl("data/a/z.jsonl", [{"text": "a/z"}])
    (tmp_path / "data" / "c.txt").write_text("c")

    rows = rows_of(tmp_path / "data", "s3://bucket/data/")

    assert [row.origin for row in rows] == [
        "s3://bucket/data/a/z.jsonl:1",
        "s3://bucket/data/b.jsonl:1",
        "s3://bucket/data/c.txt:1",
    ]


def test_directory_skips_hidden_marker_and_unknown_files(tmp_path, write_jsonl):
    write_jsonl("data/part-0.jsonl", [{"text": "kept"}])
    write_jsonl("data/.cache/part-1.jsonl", [{"text": "hidden"}])
    (tmp_path / "data" / "_SUCCESS").write_text("")
    (tmp_path / "data" / "README.md").write_text("# about")

    assert [row.value for row in rows_of(tmp_path / "data")] == [{"text": "kept"}]


def test_missing_path_is_a_data_error_naming_the_uri(tmp_path):
    with pytest.raises(DataError, match=r"^s3://bucket/nothing: not found"):
        rows_of(tmp_path / "nothing", "s3://bucket/nothing")


def test_single_file_of_unsupported_type_is_a_data_error(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_bytes(b"PK")

    with pytest.raises(DataError, match="unsupported file type"):
        rows_of(path, "s3://bucket/train.xlsx")


def test_an_empty_file_among_several_is_an_invalid_row_naming_it(tmp_path):
    directory = tmp_path / "shards"
    directory.mkdir()
    (directory / "a.jsonl").write_text('{"text": "hello"}\n')
    (directory / "b.jsonl").write_text("")

    rows = list(read_source(directory, f"file://{directory}"))

    assert [(row.origin.rsplit("/", 1)[-1], row.error) for row in rows] == [
        ("a.jsonl:1", None),
        ("b.jsonl:1", "empty file"),
    ]
