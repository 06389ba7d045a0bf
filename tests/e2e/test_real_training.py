"""The whole path for real: a FineTuneJob trains through the cluster. The local node agent runs the
training pod's container command on this machine's CPU; the trainer reads the model and the data
from MinIO, pushes progress to the operator, checkpoints, evaluates, passes the gate and stores the
adapter, which the operator publishes and verifies as a ModelAdapter."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest
import yaml
from kubehelpers import apply, claim_on_local_volume, condition, condition_is, get, items, wait_for

from hack.demo import QUICKSTART, build_base_model, upload_directory
from hack.localcluster import free_port

pytestmark = [pytest.mark.s3, pytest.mark.trainer]

DATA = QUICKSTART.parent / "data" / "quickstart"


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return build_base_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def stores(minio, base_model, cluster, namespace) -> dict[str, str]:
    """Buckets of this test's own: the base model, the data and the outputs; and their Secret."""
    suffix = uuid.uuid4().hex[:8]
    buckets = {purpose: minio.create_bucket(f"{purpose}-{suffix}") for purpose in ("models", "datasets", "adapters")}
    client = minio.client()
    upload_directory(client, buckets["models"], "tiny-llama", base_model)
    upload_directory(client, buckets["datasets"], "quickstart", DATA)
    keys = [f"--from-literal={key}={value}" for key, value in minio.credentials.items()]
    cluster.run_kubectl("create", "secret", "generic", "s3-creds", "-n", namespace, *keys)
    return buckets


@pytest.fixture
def trainer_operator(start_operator, namespace, cluster):
    port = free_port()
    return start_operator(
        f"--progress-port={port}", f"--progress-url=https://127.0.0.1:{port}", f"--operator-namespace={namespace}"
    )


def quickstart(namespace: str, buckets: dict[str, str], **training) -> dict:
    """examples/quickstart.yaml, in this test's namespace and buckets, shortened."""
    manifest = yaml.safe_load(QUICKSTART.read_text())
    manifest["metadata"]["namespace"] = namespace
    spec = manifest["spec"]
    spec["model"]["uri"] = f"s3://{buckets['models']}/tiny-llama/"
    data = spec["data"]
    data["train"] = [{"uri": f"s3://{buckets['datasets']}/quickstart/train.jsonl"}]
    data["eval"] = {"uri": f"s3://{buckets['datasets']}/quickstart/eval.jsonl"}
    data["general"] = {"uri": f"s3://{buckets['datasets']}/quickstart/general.jsonl", "format": "text"}
    spec["output"]["uri"] = f"s3://{buckets['adapters']}/"
    spec["training"] = {**copy.deepcopy(spec["training"]), **training}
    spec["training"].pop("epochs", None)
    return manifest


def test_a_finetunejob_trains_for_real_and_publishes_a_ready_adapter_that_loads(
    cluster, namespace, local_node, minio, stores, trainer_operator, base_model, tmp_path
):
    manifest = quickstart(namespace, stores, maxSteps=40, checkpointEverySteps=10)
    apply(cluster, manifest)
    name = manifest["metadata"]["name"]

    seen_progress: list[int] = []

    def training_done():
        ftj = get(cluster, "ftj", namespace, name)
        percent = ((ftj or {}).get("status") or {}).get("progress", {}).get("percent")
        if percent is not None and (not seen_progress or seen_progress[-1] != percent):
            seen_progress.append(percent)
        finished = [condition(ftj, "Published"), condition(ftj, "Failed")]
        return any(found and found["status"] == "True" for found in finished) or (
            condition(ftj, "Published") and condition(ftj, "Published")["status"] == "False"
        )

    wait_for("the job to train and publish", training_done, timeout=600, interval=0.5)
    ftj = get(cluster, "ftj", namespace, name)
    assert condition(ftj, "Succeeded")["status"] == "True", ftj["status"]["conditions"]
    assert condition(ftj, "Published")["status"] == "True", condition(ftj, "Published")
    assert any(0 < percent < 100 for percent in seen_progress), f"no live progress was seen: {seen_progress}"
    status = ftj["status"]
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 40
    assert status["progress"]["trainLoss"] > 0
    assert status["checkpoint"]["step"] == 40
    assert status["checkpoint"]["uri"].startswith(f"s3://{stores['adapters']}/{namespace}/{name}/checkpoints/")
    assert status["evaluation"]["gate"] == "Passed"
    assert status["evaluation"]["task"]["adapterLoss"] < status["evaluation"]["task"]["baseLoss"]
    pod = items(cluster, "pods", namespace, f"finetune.dev/job={name}")[0]
    assert pod["spec"]["nodeName"] == local_node.node_name

    adapter_name = manifest["spec"]["adapter"]["name"]
    wait_for("Ready", condition_is(cluster, namespace, adapter_name, "Ready", kind="ftadapter"), timeout=120)
    adapter = get(cluster, "ftadapter", namespace, adapter_name)
    assert adapter["spec"]["artifact"]["digest"] == status["adapter"]["digest"]

    # The published adapter, downloaded from MinIO, loads with PEFT on the base and generates.
    artifact = adapter["spec"]["artifact"]["uri"].removeprefix(f"s3://{stores['adapters']}/").rstrip("/")
    download = tmp_path / "adapter"
    client = minio.client()
    for entry in client.list_objects_v2(Bucket=stores["adapters"], Prefix=artifact + "/")["Contents"]:
        target = download / entry["Key"].removeprefix(artifact + "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(stores["adapters"], entry["Key"], str(target))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(download)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), download)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Customer Ines Costa from Oslo writes: the tracking number does not work."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_a_training_pod_deleted_mid_run_is_retried_and_resumes_from_its_checkpoint(
    cluster, namespace, local_node, minio, stores, trainer_operator
):
    manifest = quickstart(namespace, stores, maxSteps=80, checkpointEverySteps=10, batchTokens=1024)
    manifest["metadata"]["name"] = "interrupted"
    manifest["spec"]["adapter"]["name"] = "interrupted-v1"
    apply(cluster, manifest)

    def checkpointed():
        status = (get(cluster, "ftj", namespace, "interrupted") or {}).get("status") or {}
        return status.get("checkpoint", {}).get("step", 0) >= 20 and status.get("progress", {}).get("step", 0) < 70

    wait_for("a checkpoint mid-run", checkpointed, timeout=300, interval=0.5)
    (pod,) = [
        p
        for p in items(cluster, "pods", namespace, "finetune.dev/job=interrupted")
        if p["status"]["phase"] == "Running"
    ]
    cluster.run_kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")

    wait_for("Published", condition_is(cluster, namespace, "interrupted", "Published"), timeout=600, interval=0.5)
    status = get(cluster, "ftj", namespace, "interrupted")["status"]
    assert status["restarts"] >= 1
    assert status["resumedFromStep"] >= 20, status
    assert status["progress"]["step"] == 80
    assert condition(get(cluster, "ftj", namespace, "interrupted"), "Succeeded")["status"] == "True"


def test_a_job_writing_to_a_volume_publishes_an_adapter_verified_by_a_pod_on_that_volume(
    cluster, namespace, local_node, minio, stores, start_operator, tmp_path, request
):
    """output.uri on a PersistentVolumeClaim, and no progress endpoint: the trainer writes through the
    mounted claim and leaves its final summary in its termination message; the operator, which can
    neither mount the claim nor hear from the trainer, publishes from that summary and has a
    verification pod check the published files on the volume."""
    from hack.nodeagent import NODE_LABEL

    volume_dir = tmp_path / "outputs-volume"
    claim_on_local_volume(cluster, namespace, "outputs", volume_dir, request)
    start_operator(
        "--progress-port=0",
        f"--verifier-node-selector={NODE_LABEL}=true",
        f"--verifier-tolerations={NODE_LABEL}=true:NoSchedule",
    )
    manifest = quickstart(namespace, stores, maxSteps=10, checkpointEverySteps=5)
    manifest["spec"]["output"] = {"uri": "pvc://outputs/finetune/"}
    manifest["spec"]["evaluation"]["gate"]["mode"] = "warn"  # 10 steps need not pass the quickstart's gate
    apply(cluster, manifest)
    name, adapter_name = manifest["metadata"]["name"], manifest["spec"]["adapter"]["name"]

    wait_for("Published", condition_is(cluster, namespace, name, "Published"), timeout=600, interval=0.5)
    status = get(cluster, "ftj", namespace, name)["status"]
    assert "progress" not in status  # nothing was pushed
    assert status["artifact"]["uri"].startswith(f"pvc://outputs/finetune/{namespace}/")
    assert status["evaluation"]["task"]["adapterLoss"] < status["evaluation"]["task"]["baseLoss"]
    ready = wait_for("Ready", condition_is(cluster, namespace, adapter_name, "Ready", kind="ftadapter"), timeout=120)
    assert ready["reason"] == "Verified" and status["adapter"]["digest"] in ready["message"]
    (verifier,) = items(cluster, "pods", namespace, f"finetune.dev/model-adapter={adapter_name}")
    assert verifier["spec"]["nodeName"] == local_node.node_name

    # The files are on the volume, where the claim's pods would read them.
    uri = get(cluster, "ftadapter", namespace, adapter_name)["spec"]["artifact"]["uri"]
    stored = volume_dir / uri.removeprefix("pvc://outputs/").rstrip("/")
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {p.name for p in stored.iterdir()}
    checkpoints = volume_dir / "finetune" / namespace / name / "checkpoints"
    assert any(checkpoints.iterdir()), "no checkpoint on the volume"


def test_a_job_on_the_shared_output_trains_and_publishes_with_minted_credentials_only(
    cluster, namespace, local_node, minio, stores, start_operator
):
    """No Secret of the tenant's own anywhere: the pod reads the model and data and writes checkpoints and
    the adapter with the per-job STS credentials the operator minted, which reach nothing else; the
    operator reads the report and verifies the adapter with read-only sessions."""
    from hack.localcluster.minio import ACCESS_KEY, REGION, SECRET_KEY

    keys = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": minio.endpoint}
    literals = [f"--from-literal={key}={value}" for key, value in {**keys, "AWS_REGION": REGION}.items()]
    cluster.run_kubectl("create", "secret", "generic", "sts-minter", "-n", namespace, *literals)
    port = free_port()
    start_operator(
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--operator-namespace={namespace}",
        f"--default-output-uri=s3://{stores['adapters']}/shared/",
        "--sts-credentials-secret=sts-minter",
    )
    manifest = quickstart(namespace, stores, maxSteps=40, checkpointEverySteps=10)
    spec = manifest["spec"]
    del spec["output"], spec["model"]["credentialsSecretRef"], spec["data"]["credentialsSecretRef"]
    apply(cluster, manifest)
    name, adapter_name = manifest["metadata"]["name"], spec["adapter"]["name"]

    wait_for("Published", condition_is(cluster, namespace, name, "Published"), timeout=600, interval=0.5)
    status = get(cluster, "ftj", namespace, name)["status"]
    assert status["checkpoint"]["uri"].startswith(f"s3://{stores['adapters']}/shared/{namespace}/{name}/checkpoints/")
    ready = wait_for("Ready", condition_is(cluster, namespace, adapter_name, "Ready", kind="ftadapter"), timeout=120)
    assert ready["reason"] == "Verified"
    adapter = get(cluster, "ftadapter", namespace, adapter_name)
    assert "credentialsSecretRef" not in adapter["spec"]["artifact"]
    pod = items(cluster, "pods", namespace, f"finetune.dev/job={name}")[0]
    mounted = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert mounted == {f"{name}-storage"}  # the stores' s3-creds exists in the namespace, and is not used
