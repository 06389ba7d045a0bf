"""The OpenAI-compatible API as an SDK user meets it: the official ``openai`` package against
``python -m finetune_operator.openai_api`` on the real control plane, files in MinIO, and the operator
reconciling the jobs it creates. Tokens are ServiceAccount tokens of two tenant namespaces, each bound by a
Role to FineTuneJobs and ModelAdapters of its own namespace only."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest
from kubehelpers import apply, get, wait_for

from hack.localcluster import free_port
from hack.localcluster.openai_api import OpenAIApiProcess, chart_identity, tenant_token

pytestmark = pytest.mark.s3

MODEL = "e2e-tiny-llama"
RESTRICTED = "e2e-restricted-llama"
TRAINABLE = "e2e-trainable-llama"
# The admin's placement of API jobs: the local node agent's node, where pods really run.
LOCAL_NODE = {
    "nodeSelector": {"finetune.dev/local-node": "true"},
    "tolerations": [{"key": "finetune.dev/local-node", "operator": "Exists", "effect": "NoSchedule"}],
}
CHAT = {
    "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}
DPO = {
    "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
    "preferred_output": [{"role": "assistant", "content": "Paris."}],
    "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
}


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def tenant(cluster, name: str) -> str:
    """A namespace with a ServiceAccount bound to a Role on FineTuneJobs and ModelAdapters there; its token."""
    cluster.run_kubectl("create", "namespace", name)
    return tenant_token(cluster, name)


@pytest.fixture(scope="module")
def buckets(minio) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {purpose: minio.create_bucket(f"{purpose}-{suffix}") for purpose in ("files", "models", "adapters")}


@pytest.fixture(scope="module")
def tenants(cluster, minio, buckets):
    """Namespaces A and B, each with its tokens and the Secret its jobs read storage with; the catalog."""
    cluster.run_kubectl("wait", "--for=condition=Established", "crd/finetunemodels.finetune.dev", "--timeout=60s")
    suffix = uuid.uuid4().hex[:6]
    names = {"a": f"openai-a-{suffix}", "b": f"openai-b-{suffix}"}
    tokens = {key: tenant(cluster, name) for key, name in names.items()}
    keys = [f"--from-literal={key}={value}" for key, value in minio.credentials.items()]
    for name in names.values():
        cluster.run_kubectl("create", "secret", "generic", "s3-creds", "-n", name, *keys)
    # MODEL's jobs ask for more memory than any node has: they wait, where kwok's nodes would finish them at once.
    waiting = {"maxSeqLength": 256, "resources": {"memory": "64Ti"}}
    catalog = [
        (MODEL, waiting, {"maxEpochs": 3}),
        (RESTRICTED, waiting, {"namespaces": [names["b"]]}),
        (TRAINABLE, {"maxSeqLength": 256, "resources": {"gpusPerNode": 0}}, {"namespaces": [names["a"]]}),
    ]
    for name, defaults, limits in catalog:
        spec = {
            "uri": f"s3://{buckets['models']}/tiny-llama/",
            "credentialsSecretRef": {"name": "s3-creds"},
            "defaults": defaults,
            "limits": limits,
        }
        apply(
            cluster,
            {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneModel", "metadata": {"name": name}, "spec": spec},
        )
    yield names, tokens
    for name in names.values():
        cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.run_kubectl("delete", "finetunemodel", MODEL, RESTRICTED, TRAINABLE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api_kubeconfig(cluster, tmp_path_factory):
    """The API's identity exactly as the chart renders it: every test of this module also proves the chart's
    RBAC is enough."""
    namespace = f"openai-release-{uuid.uuid4().hex[:6]}"
    cluster.run_kubectl("create", "namespace", namespace)
    kubeconfig, cluster_objects = chart_identity(cluster, namespace, tmp_path_factory.mktemp("identity"))
    yield kubeconfig
    cluster.run_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    for kind, name in cluster_objects:
        cluster.run_kubectl("delete", kind, name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api_url(cluster, minio, buckets, api_kubeconfig, tmp_path_factory):
    """The API, serving HTTPS with a certificate of a CA of its own, as the chart's ServiceAccount; its base
    URL and CA file."""
    bucket = buckets["files"]
    api = OpenAIApiProcess(
        api_kubeconfig,
        tmp_path_factory.mktemp("openai-api"),
        f"s3://{bucket}/uploads/",
        minio.credentials,
        "--max-upload-bytes=262144",
        "--job-data-secret=s3-creds",
        f"--job-template={json.dumps(LOCAL_NODE)}",
    )
    try:
        api.start()
        yield api.url, str(api.ca_file), minio, bucket
    finally:
        api.stop()
        print(api.tail())


@pytest.fixture(scope="module")
def operator_for(cluster, minio, buckets, tenants, tmp_path_factory):
    """The operator watching tenant A's namespace (what the jobs created through the API become), with its
    progress endpoint and MinIO as the default output."""
    from hack.localcluster.operator_process import OperatorProcess

    names, _ = tenants
    port = free_port()
    process = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        f"--namespace={names['a']}",
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--operator-namespace={names['a']}",
        env={
            "FINETUNE_S3_ENDPOINT": minio.endpoint,
            "FINETUNE_DEFAULT_OUTPUT_URI": f"s3://{buckets['adapters']}/",
            "FINETUNE_DEFAULT_OUTPUT_SECRET": "s3-creds",
        },
    ).start()
    yield process
    process.stop()


def client(api_url, token: str, project: str | None) -> openai.OpenAI:
    url, ca_file, _, _ = api_url
    return openai.OpenAI(
        api_key=token,
        base_url=url,
        project=project,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=ca_file),
    )


@pytest.fixture(scope="module")
def sdk_a(api_url, tenants):
    names, tokens = tenants
    return client(api_url, tokens["a"], names["a"])


@pytest.fixture(scope="module")
def chat_file(sdk_a):
    return sdk_a.files.create(file=("train.jsonl", jsonl([CHAT] * 12)), purpose="fine-tune")


def test_an_uploaded_chat_file_is_listed_read_back_and_stored_under_the_namespaces_prefix(
    sdk_a, chat_file, api_url, tenants
):
    names, _ = tenants
    _, _, minio, bucket = api_url
    assert chat_file.id.startswith("file-")
    assert (chat_file.filename, chat_file.purpose, chat_file.bytes) == (
        "train.jsonl",
        "fine-tune",
        len(jsonl([CHAT] * 12)),
    )
    assert chat_file.id in [f.id for f in sdk_a.files.list()]
    assert sdk_a.files.retrieve(chat_file.id).filename == "train.jsonl"
    assert sdk_a.files.content(chat_file.id).content == jsonl([CHAT] * 12)
    keys = [o["Key"] for o in minio.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert f"uploads/{names['a']}/files/{chat_file.id}/messages/train.jsonl" in keys


def test_an_invalid_line_is_refused_naming_the_line(sdk_a):
    rows = jsonl([CHAT] * 4) + b'{"messages": [{"role": "user", "content": "no answer"}]}\n' + jsonl([CHAT] * 8)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_a.files.create(file=("bad.jsonl", rows), purpose="fine-tune")
    error = caught.value.body
    assert error["code"] == "invalid_file_format" and error["param"] == "file"
    assert error["message"].startswith("Invalid file format. Line 5: ")


def test_an_upload_over_the_limit_is_refused_413(sdk_a):
    with pytest.raises(openai.APIStatusError) as caught:
        sdk_a.files.create(file=("big.jsonl", jsonl([CHAT] * 2000)), purpose="fine-tune")
    assert caught.value.status_code == 413


def test_an_upload_without_a_length_is_refused_411_before_its_body_is_read(api_url, tenants):
    """A chunked body declares no length, and aiohttp bounds no streamed multipart body: file parts, each
    under the limit, were accepted together over it."""
    url, ca_file, _, _ = api_url
    names, tokens = tenants
    part = jsonl([CHAT] * 400)  # about 90 KiB: under the 256 KiB limit; three of them are over it
    boundary = "b0undary"

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'.encode()
        for _ in range(3):
            yield (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="train.jsonl"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            yield part + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    headers = {
        "Authorization": f"Bearer {tokens['a']}",
        "OpenAI-Project": names["a"],
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    with httpx.Client(verify=ca_file) as http:
        answer = http.post(f"{url}/files", content=body(), headers=headers)
    assert answer.status_code == 411, answer.text
    assert answer.json()["error"]["code"] == "length_required"


def test_a_job_is_created_seen_listed_with_events_paused_resumed_and_cancelled(
    sdk_a, chat_file, cluster, tenants, operator_for
):
    names, _ = tenants
    job = sdk_a.fine_tuning.jobs.create(
        model=MODEL,
        training_file=chat_file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        suffix="support",
        metadata={"team": "support"},
    )
    assert job.id.startswith("ftjob-") and job.model == MODEL
    assert job.status in ("validating_files", "queued", "running")
    assert job.hyperparameters.n_epochs == 2
    finetunejob = get(cluster, "ftj", names["a"], job.id)
    assert finetunejob["spec"]["model"] == {"name": MODEL}
    assert finetunejob["spec"]["training"]["epochs"] == 2
    assert finetunejob["spec"]["data"]["train"][0]["uri"].endswith(f"/{chat_file.id}/messages/train.jsonl")

    assert sdk_a.fine_tuning.jobs.retrieve(job.id).training_file == chat_file.id
    assert [j.id for j in sdk_a.fine_tuning.jobs.list(metadata={"team": "support"})] == [job.id]
    assert list(sdk_a.fine_tuning.jobs.list(metadata={"team": "other"})) == []
    # The operator takes the job up: its conditions become events.
    wait_for(
        "the operator to record the job",
        lambda: (get(cluster, "ftj", names["a"], job.id).get("status") or {}).get("conditions"),
    )
    events = list(sdk_a.fine_tuning.jobs.list_events(job.id))
    assert events[-1].message == f"Created fine-tuning job: {job.id}"

    paused = sdk_a.fine_tuning.jobs.pause(job.id)
    assert paused.status == "queued"
    assert get(cluster, "ftj", names["a"], job.id)["spec"]["suspend"] is True
    wait_for(
        "the pause event",
        lambda: any(e.message == "Fine-tuning job paused" for e in sdk_a.fine_tuning.jobs.list_events(job.id)),
    )
    sdk_a.fine_tuning.jobs.resume(job.id)
    assert get(cluster, "ftj", names["a"], job.id)["spec"]["suspend"] is False
    cancelled = sdk_a.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        sdk_a.fine_tuning.jobs.resume(job.id)
    assert list(sdk_a.fine_tuning.jobs.checkpoints.list(job.id)) == []


def test_dpo_through_method_needs_a_preference_file(sdk_a, chat_file, cluster, tenants):
    names, _ = tenants
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_a.fine_tuning.jobs.create(model=MODEL, training_file=chat_file.id, method={"type": "dpo"})
    assert caught.value.body["param"] == "training_file"
    preferences = sdk_a.files.create(file=("pairs.jsonl", jsonl([DPO] * 10)), purpose="fine-tune")
    job = sdk_a.fine_tuning.jobs.create(
        model=MODEL,
        training_file=preferences.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    spec = get(cluster, "ftj", names["a"], job.id)["spec"]
    assert (spec["objective"], spec["data"]["format"], spec["training"]["dpo"]) == ("dpo", "preference", {"beta": 0.2})
    assert job.method.type == "dpo"


@pytest.mark.parametrize("model", ["no-such-model", RESTRICTED])
def test_an_unknown_model_and_one_the_namespace_may_not_use_are_the_same_openai_404(sdk_a, chat_file, model):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk_a.fine_tuning.jobs.create(model=model, training_file=chat_file.id)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


def test_a_job_over_a_catalog_limit_is_refused_naming_the_limit(sdk_a, chat_file):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_a.fine_tuning.jobs.create(model=MODEL, training_file=chat_file.id, hyperparameters={"n_epochs": 5})
    assert "maxEpochs 3" in caught.value.body["message"]


def test_an_unknown_parameter_is_refused_by_name(sdk_a, chat_file):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_a.fine_tuning.jobs.create(model=MODEL, training_file=chat_file.id, extra_body={"warmup": 3})
    assert caught.value.body["param"] == "warmup"


def test_models_lists_the_usable_catalog_entries(sdk_a):
    ids = [m.id for m in sdk_a.models.list()]
    assert MODEL in ids and RESTRICTED not in ids


def test_a_wrong_token_is_401(api_url, tenants):
    names, _ = tenants
    with pytest.raises(openai.AuthenticationError) as caught:
        client(api_url, "not-a-token", names["a"]).fine_tuning.jobs.list()
    assert caught.value.body["code"] == "invalid_api_key"


def test_namespace_bs_token_never_sees_as_jobs_or_files(api_url, tenants, sdk_a, chat_file):
    names, tokens = tenants
    job = next(iter(sdk_a.fine_tuning.jobs.list()))
    for project in (names["a"], names["b"], None):
        other = client(api_url, tokens["b"], project)
        with pytest.raises(openai.NotFoundError):
            other.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(chat_file.id)
    with pytest.raises(openai.PermissionDeniedError):
        client(api_url, tokens["b"], names["a"]).fine_tuning.jobs.list()
    assert list(client(api_url, tokens["b"], None).fine_tuning.jobs.list()) == []


@pytest.mark.trainer
def test_a_job_made_with_the_sdk_trains_for_real_to_succeeded_and_its_model_is_listed(
    sdk_a, cluster, tenants, buckets, minio, operator_for, local_node, tmp_path
):
    """Last: the local node agent runs the training pod on this machine's CPU."""
    from hack.demo import QUICKSTART, build_base_model, upload_directory

    upload_directory(minio.client(), buckets["models"], "tiny-llama", build_base_model(tmp_path / "tiny-llama"))
    data = QUICKSTART.parent / "data" / "quickstart"
    train = sdk_a.files.create(file=("train.jsonl", (data / "train.jsonl").read_bytes()), purpose="fine-tune")
    validation = sdk_a.files.create(file=("eval.jsonl", (data / "eval.jsonl").read_bytes()), purpose="fine-tune")
    job = sdk_a.fine_tuning.jobs.create(
        model=TRAINABLE,
        training_file=train.id,
        validation_file=validation.id,
        hyperparameters={"n_epochs": 1, "batch_size": 8},
        suffix="triage",
    )

    def finished():
        found = sdk_a.fine_tuning.jobs.retrieve(job.id)
        return found if found.status in ("succeeded", "failed") else None

    done = wait_for("the job to train and publish", finished, timeout=600, interval=2)
    assert done.status == "succeeded", (done.error, get(cluster, "ftj", tenants[0]["a"], job.id)["status"])
    assert done.fine_tuned_model == f"{job.id}-triage"
    assert done.finished_at >= done.created_at
    events = list(sdk_a.fine_tuning.jobs.list_events(job.id, limit=100))
    assert events[0].message.startswith("The job has successfully completed")
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and metrics[0].data["train_loss"] > 0
    wait_for(
        "the adapter to be Ready and listed",
        lambda: done.fine_tuned_model in [m.id for m in sdk_a.models.list()],
        timeout=120,
    )
    checkpoints = list(sdk_a.fine_tuning.jobs.checkpoints.list(job.id))
    status = get(cluster, "ftj", tenants[0]["a"], job.id)["status"]
    assert [c.step_number for c in checkpoints] == ([status["checkpoint"]["step"]] if status.get("checkpoint") else [])
