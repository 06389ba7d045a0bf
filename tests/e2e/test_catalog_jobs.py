"""The model catalog against the real control plane: the API server's rules for FineTuneModels and catalog
jobs, kubectl's view of the catalog, and a waiting job sent on by the FineTuneModel's watch event. How a
reconcile resolves, refuses and defaults a catalog job is the in-process tier's
(tests/inprocess/test_reconcile_catalog.py)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from catalog import edited, valid_job
from kubehelpers import apply, condition_is, get, wait_for
from prometheus_client.parser import text_string_to_metric_families

from hack.localcluster import free_port

REPO = Path(__file__).resolve().parents[2]
RUN = "test.finetune.dev/run-duration"


@pytest.fixture
def models(cluster):
    """Apply FineTuneModels (cluster-scoped: named after the test, deleted afterwards)."""
    created: list[str] = []

    def create(name: str, **spec) -> None:
        apply(
            cluster,
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneModel",
                "metadata": {"name": name},
                "spec": {"uri": "s3://models/tiny-llama/", **spec},
            },
        )
        created.append(name)

    yield create
    for name in created:
        cluster.run_kubectl("delete", "finetunemodel", name, "--wait=false", check=False)


def catalog_job(name: str, namespace: str, model: str, **edits) -> dict:
    manifest = edited(
        valid_job(name), {"spec.model": {"name": model}, "spec.template": {"podAnnotations": {RUN: "1h"}}}
    )
    manifest["metadata"]["namespace"] = namespace
    return edited(manifest, edits)


def api_requests(metrics_port: int) -> dict[tuple[str, str], float]:
    """The operator's own requests so far, by (verb, resource), from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        (s.labels["verb"], s.labels["resource"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "finetune_operator_api_requests_total"
    }


def test_an_unknown_model_is_not_found_and_resolves_as_soon_as_it_is_created_read_from_the_watch(
    cluster, namespace, models, start_operator
):
    # No resync in the test's time: only the FineTuneModel's watch event can send the waiting job on.
    metrics_port = free_port()
    start_operator(
        "--resync-seconds=3600", env={"FINETUNE_METRICS_PORT": str(metrics_port), "FINETUNE_METRICS_SECURE": "false"}
    )
    model = f"{namespace}-later"
    apply(cluster, catalog_job("patient", namespace, model))

    missing = wait_for("ModelResolved False", condition_is(cluster, namespace, "patient", "ModelResolved", "False"))
    assert missing["reason"] == "ModelNotFound"
    assert get(cluster, "job", namespace, "patient") is None

    models(model)
    wait_for("ModelResolved True", condition_is(cluster, namespace, "patient", "ModelResolved"), timeout=30)
    wait_for("the training Job", lambda: get(cluster, "job", namespace, "patient"))
    # The model came from the watch-fed cache: no reconcile sent a request for it.
    assert not [key for key in api_requests(metrics_port) if key[1] == "finetunemodels"]


def test_the_api_server_refuses_a_job_with_both_a_name_and_a_uri(cluster, namespace):
    manifest = catalog_job("both", namespace, "some-model", **{"spec.model.uri": "hf://org/model"})
    result = cluster.run_kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "spec.model needs exactly one of name" in result.stderr


def test_kubectl_get_shows_the_catalog(cluster, models):
    models("catalog-columns", revision="v1", servingName="tiny", limits={"maxGPUs": 4})
    table = cluster.run_kubectl("get", "finetunemodels", "catalog-columns").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "URI", "REVISION", "SERVING-NAME", "MAX-GPUS", "AGE"]
    assert row.split()[:5] == ["catalog-columns", "s3://models/tiny-llama/", "v1", "tiny", "4"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"defaults": {"resources": {"nodes": 2, "gpusPerNode": 8}}, "limits": {"maxGPUs": 8}},
            "exceeds spec.limits.maxGPUs",
        ),
        ({"limits": {"maxLoraRank": 8}}, "spec.defaults.method.lora.rank exceeds spec.limits.maxLoraRank"),
        ({"limits": {"allowedMethods": ["full"]}}, "spec.defaults.method.type is not in spec.limits.allowedMethods"),
        (
            {"limits": {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}}},
            "values are required with In and NotIn",
        ),
    ],
    ids=[
        "default-gpus-over-limit",
        "built-in-rank-over-limit",
        "built-in-method-not-allowed",
        "selector-without-values",
    ],
)
def test_the_api_server_refuses_a_model_whose_defaults_break_its_limits(cluster, spec, message):
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneModel",
        "metadata": {"name": "refused-model"},
        "spec": {"uri": "hf://org/model", **spec},
    }
    result = cluster.run_kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_example_catalog_is_accepted_by_the_api_server(cluster):
    result = cluster.run_kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", str(REPO / "examples" / "catalog.yaml")
    )
    assert result.stdout.count("serverside-applied (server dry run)") == 2, result.stdout
