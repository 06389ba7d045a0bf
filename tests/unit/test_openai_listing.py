"""Pages, metadata filters, the files' keys and the models list."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from finetune_operator.openai_api.errors import ApiError
from finetune_operator.openai_api.files import file_key, parse_key, safe_filename
from finetune_operator.openai_api.models import models_list
from finetune_operator.openai_api.paging import metadata_filter, page, page_request

ITEMS = [{"id": f"item-{n}"} for n in range(5)]


def test_pages_follow_the_id_of_the_last_item_seen():
    first = page(ITEMS, None, 2)
    assert [i["id"] for i in first["data"]] == ["item-0", "item-1"] and first["has_more"]
    last = page(ITEMS, "item-3", 2)
    assert [i["id"] for i in last["data"]] == ["item-4"] and not last["has_more"]


def test_a_page_after_an_item_no_longer_listed_is_empty_so_clients_do_not_loop():
    assert page(ITEMS, "gone", 2) == {"object": "list", "data": [], "has_more": False}


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"order": "asc"}])
def test_page_parameters_are_checked(query):
    with pytest.raises(ApiError):
        page_request(query)


def test_metadata_filters_are_read_from_bracketed_query_parameters():
    assert metadata_filter({"metadata[team]": "a", "limit": "3"}) == {"team": "a"}
    assert page_request({"metadata[team]": "a", "limit": "3"}) == (None, 3)


def test_a_files_key_holds_its_id_kind_and_safe_name_under_the_namespace():
    key = file_key("uploads/", "team-a", "file-" + "c" * 24, "messages", safe_filename("../../etc/pass wd.jsonl"))
    assert key == f"uploads/team-a/files/file-{'c' * 24}/messages/pass_wd.jsonl"
    stored = parse_key("uploads/", "team-a", key, 10, datetime(2027, 1, 1, tzinfo=UTC))
    assert (stored.id, stored.kind, stored.filename, stored.bytes) == (
        "file-" + "c" * 24,
        "messages",
        "pass_wd.jsonl",
        10,
    )
    assert parse_key("uploads/", "team-b", key, 10, datetime(2027, 1, 1, tzinfo=UTC)) is None


def model(name, **limits):
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneModel",
        "metadata": {"name": name, "creationTimestamp": "2027-01-01T00:00:00Z"},
        "spec": {"uri": f"hf://org/{name}", "limits": limits},
    }


def test_the_catalog_models_listed_are_those_the_namespace_may_use():
    selector = {"matchLabels": {"tier": "gold"}}
    catalog = [model("open"), model("listed", namespaces=["a"]), model("other", namespaces=["b"])]
    catalog.append(model("gold", namespaceSelector=selector))
    assert [m["id"] for m in models_list(catalog, [], "a", {})["data"]] == ["listed", "open"]
    assert [m["id"] for m in models_list(catalog, [], "a", {"tier": "gold"})["data"]] == ["gold", "listed", "open"]


def test_a_malformed_catalog_entry_is_not_offered():
    broken = model("broken")
    broken["spec"]["uri"] = "ftp://nowhere"
    assert models_list([broken], [], "a", {})["data"] == []


def test_models_are_the_usable_catalog_entries_and_the_ready_adapters():
    adapters = [
        {"metadata": {"name": "ftjob-1", "namespace": "a"}, "status": {"phase": "Ready"}},
        {"metadata": {"name": "ftjob-2", "namespace": "a"}, "status": {"phase": "Verifying"}},
    ]
    listed = models_list([model("llama"), model("secret", namespaces=["b"])], adapters, "a", {})
    assert [(m["id"], m["owned_by"]) for m in listed["data"]] == [("llama", "system"), ("ftjob-1", "a")]
