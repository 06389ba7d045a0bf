"""The watch-fed caches: what is kept of an object, which version wins, and what a deletion or a write does."""

from __future__ import annotations

from typing import Any

from finetune_operator.cache import WATCHED, Caches, Store, is_newer, job_view, matches, pod_view
from finetune_operator.kube import FINETUNEJOBS, JOBS, PODS
from finetune_operator.naming import JOB_LABEL


def obj(name: str = "a", rv: str = "10", uid: str = "u1", namespace: str = "ns", **rest: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": rv,
            "labels": {JOB_LABEL: "demo"},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
        },
        **rest,
    }


def test_a_pod_keeps_its_status_and_metadata_but_not_its_spec_or_managed_fields():
    pod = obj(spec={"containers": [{"name": "trainer", "env": [{"name": "X", "value": "y" * 1000}]}]})
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [{"name": "trainer"}]}
    kept = pod_view(pod)
    assert "spec" not in kept and "managedFields" not in kept["metadata"]
    assert kept["status"] == {"phase": "Running", "containerStatuses": [{"name": "trainer"}]}
    assert kept["metadata"]["labels"] == {JOB_LABEL: "demo"}


def test_a_job_keeps_its_spec_without_the_pod_template():
    job = obj(spec={"suspend": True, "completions": 2, "template": {"spec": {"containers": []}}}, status={"active": 1})
    kept = job_view(job)
    assert kept["spec"] == {"suspend": True, "completions": 2}
    assert kept["status"] == {"active": 1}


def test_what_is_kept_is_a_copy_of_the_event():
    event = obj(status={"phase": "Pending"})
    kept = pod_view(event)
    event["status"]["phase"] = "Running"
    event["metadata"]["labels"]["x"] = "y"
    assert kept["status"]["phase"] == "Pending" and "x" not in kept["metadata"]["labels"]


def test_a_newer_resource_version_wins_and_an_older_one_does_not():
    assert is_newer(obj(rv="11"), obj(rv="10"))
    assert is_newer(obj(rv="10"), obj(rv="10"))
    assert not is_newer(obj(rv="9"), obj(rv="10"))
    assert is_newer(obj(rv="9"), None)


def test_a_resource_version_that_is_not_a_number_is_taken_as_the_latest():
    assert is_newer(obj(rv="abc"), obj(rv="10"))


def test_an_older_event_does_not_replace_a_newer_write():
    store = Store(pod_view)
    store.observe(obj(rv="10"))
    store.written(obj(rv="12", status={"phase": "Running"}))
    assert not store.observe(obj(rv="11", status={"phase": "Pending"}))
    assert store.get("ns", "a")["status"]["phase"] == "Running"


def test_a_deletion_forgets_the_object_but_not_a_newer_one_of_the_same_name():
    store = Store(pod_view)
    store.observe(obj(uid="u1"))
    store.observe(obj(uid="u2", rv="20"))
    store.forget(obj(uid="u1"))
    assert store.get("ns", "a")["metadata"]["uid"] == "u2"
    store.forget(obj(uid="u2", rv="21"))
    assert store.get("ns", "a") is None


def test_a_created_object_is_kept_until_its_watch_event_but_never_over_it():
    store = Store(pod_view)
    store.created(obj(rv="5"))
    assert store.get("ns", "a")["metadata"]["resourceVersion"] == "5"
    store.observe(obj(rv="7"))
    store.created(obj(rv="5"))
    assert store.get("ns", "a")["metadata"]["resourceVersion"] == "7"


def test_a_write_to_an_object_the_watch_says_is_gone_does_not_bring_it_back():
    store = Store(pod_view)
    store.written(obj(rv="12"))
    assert store.get("ns", "a") is None


def test_select_finds_the_objects_of_one_namespace_with_the_labels():
    store = Store(pod_view)
    store.observe(obj("a"))
    store.observe(obj("b", namespace="other"))
    other = obj("c")
    other["metadata"]["labels"] = {JOB_LABEL: "else"}
    store.observe(other)
    assert [p["metadata"]["name"] for p in store.select("ns", {JOB_LABEL: "demo"})] == ["a"]


def test_labels_match_when_every_selected_label_has_its_value():
    assert matches({"a": "1", "b": "2"}, {"a": "1"})
    assert not matches({"a": "1"}, {"a": "1", "b": "2"})
    assert not matches(None, {"a": "1"})


def test_every_child_kind_is_watched_with_a_server_side_selector_and_our_own_kinds_whole():
    selectors = Caches().selectors()
    assert FINETUNEJOBS not in selectors
    assert selectors[PODS] == JOB_LABEL
    assert selectors[JOBS] == "app.kubernetes.io/managed-by=finetune-operator"
    assert {w.kind.plural for w in WATCHED} == {
        "finetunejobs",
        "modeladapters",
        "finetunemodels",
        "jobs",
        "pods",
        "services",
        "configmaps",
        "serviceaccounts",
    }


def test_the_caches_are_not_ready_before_the_first_event():
    assert not Caches().ready.is_set()
