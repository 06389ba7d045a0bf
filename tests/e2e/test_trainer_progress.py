"""The real trainer (CPU, tiny model, run as a local process with the pod's environment) pushes real
progress to a running operator, and the FineTuneJob's status follows it to the end.

The pod itself is simulated by kwok and keeps "running"; the trainer runs here with the rendered
configuration and environment of that pod, and a token bound to it, as the kubelet would give it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kubehelpers import apply, get, items, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_progress import token_for

from hack.localcluster import free_port

pytestmark = pytest.mark.trainer

NAME = "live-trainer"
STEPS = 30
FACTS = [
    ("What colour is the sky?", "The sky is blue."),
    ("What do cows drink?", "Cows drink water."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What runs pods to completion?", "A Job runs pods to completion."),
]
GENERAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Kubernetes schedules pods onto nodes.",
    "A journey of a thousand miles begins with a single step.",
]
# Paths inside the pod, and where this test puts them.
POD_PATHS = {"/scratch": "scratch", "/var/run/finetune": "var-run-finetune", "/mnt/pvc": "pvc", "/etc/finetune": "etc"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_model_and_data(root: Path) -> tuple[Path, Path, Path]:
    from hack.tinymodels import build_tiny_model

    rng = random.Random(0)
    train = [dict(zip(("prompt", "completion"), rng.choice(FACTS), strict=True)) for _ in range(60)]
    general = [{"text": rng.choice(GENERAL)} for _ in range(12)]
    corpus = [text for row in train + general for text in row.values()]
    model = build_tiny_model(root / "model", corpus=corpus, vocab_size=600)
    return (
        model,
        write_jsonl(root / "data" / "train.jsonl", train),
        write_jsonl(root / "data" / "general.jsonl", general),
    )


def finetunejob(namespace: str, model: Path, train: Path, general: Path, output: Path) -> dict:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
            "data": {
                "train": [{"uri": f"file://{train}"}],
                "eval": {"splitFraction": 0.1},
                "general": {"uri": f"file://{general}"},
            },
            "training": {
                "learningRate": 5e-3,
                "maxSteps": STEPS,
                "batchTokens": 256,
                "maxSeqLength": 64,
                "warmupRatio": 0.0,
                "checkpointEverySteps": 10,
                "seed": 7,
            },
            "evaluation": {"gate": {"mode": "warn"}},
            "resources": {"gpusPerNode": 0, "cpu": "2", "memory": "4Gi"},
            "template": {"podAnnotations": {"test.finetune.dev/run-duration": "1h"}},
            "output": {"uri": f"file://{output}"},
        },
    }


def local_path(value: str, root: Path) -> str:
    for pod_path, directory in POD_PATHS.items():
        if value == pod_path or value.startswith(pod_path + "/"):
            return str(root / directory) + value[len(pod_path) :]
    return value


def field_of(pod: dict, path: str) -> str:
    """The downward API's value of a fieldRef (metadata.name, metadata.annotations['key'], ...)."""
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return pod["metadata"][match[1]][match[2]]
    node: dict = pod
    for part in path.split("."):
        node = node[part]
    return str(node)


def pod_environment(job: dict, pod: dict, root: Path) -> dict[str, str]:
    """The trainer container's environment as the kubelet would set it, its paths moved under root."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {}
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = local_path(variable["value"], root)
        else:
            env[variable["name"]] = field_of(pod, variable["valueFrom"]["fieldRef"]["fieldPath"])
    return env


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def progress_url(start_operator, namespace) -> str:
    """The operator, serving its progress endpoint (and publishing its CA to the jobs' ConfigMaps)."""
    port = free_port()
    start_operator(
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--metrics-port={free_port()}",
        f"--operator-namespace={namespace}",
    )
    return f"https://127.0.0.1:{port}"


def test_the_real_trainer_pushes_progress_and_the_status_follows_it_to_the_end(
    cluster, namespace, progress_url, api_client, tmp_path
):
    model, train, general = tiny_model_and_data(tmp_path / "inputs")
    apply(cluster, finetunejob(namespace, model, train, general, tmp_path / "output"))
    (pod,) = wait_for(
        "the rank-0 pod to run",
        lambda: [
            p
            for p in items(cluster, "pods", namespace, f"finetune.dev/job={NAME}")
            if p["status"].get("phase") == "Running"
        ],
    )

    # What the kubelet would mount: the ConfigMap, and a projected token bound to this pod.
    config_map = get(cluster, "configmap", namespace, f"{NAME}-config")
    pod_root = tmp_path / "pod"
    config = json.loads(config_map["data"]["config.json"])
    assert config["progress"]["url"] == f"{progress_url}/v1/namespaces/{namespace}/finetunejobs/{NAME}/progress"
    ca_file = Path(local_path(config["progress"]["caFile"], pod_root))
    token_file = Path(local_path(config["progress"]["tokenFile"], pod_root))
    config_file = pod_root / "etc" / "config.json"
    for path in (ca_file, token_file, config_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_text(config_map["data"]["progress-ca.crt"])
    token_file.write_text(token_for(api_client, namespace, pod))
    config["progress"].update(caFile=str(ca_file), tokenFile=str(token_file))
    config_file.write_text(json.dumps(config))

    metrics_port = free_port()
    environment = {
        **os.environ,
        **pod_environment(get(cluster, "job", namespace, NAME), pod, pod_root),
        "FINETUNE_TERMINATION_LOG": str(pod_root / "termination-log"),
        "FINETUNE_METRICS_PORT": str(metrics_port),
        "OMP_NUM_THREADS": "2",  # the test machines have two cores
    }
    for directory in ("HOME", "TMPDIR"):
        Path(environment[directory]).mkdir(parents=True, exist_ok=True)
    log_file = tmp_path / "trainer.log"
    started = time.monotonic()
    with log_file.open("wb") as log:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "finetune_trainer", f"--config={config_file}"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    # While it trains: the status and the trainer's own /metrics, as kubectl and Prometheus see them.
    steps_seen, scraped = [], []
    try:
        while trainer.poll() is None:
            assert time.monotonic() - started < 600, "the trainer did not finish in 10 minutes"
            progress = (get(cluster, "ftj", namespace, NAME).get("status") or {}).get("progress") or {}
            if "step" in progress and progress["step"] not in steps_seen:
                steps_seen.append(progress["step"])
            with contextlib.suppress(OSError):  # not serving yet, or already stopped
                scraped.append(scrape(metrics_port))
            time.sleep(0.25)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    output = log_file.read_text(errors="replace")
    assert trainer.returncode == 0, output[-4000:]

    # No waiting: the final report was delivered before the trainer exited.
    status = get(cluster, "ftj", namespace, NAME)["status"]
    progress = status["progress"]
    assert progress["step"] == progress["totalSteps"] == STEPS and progress["percent"] == 100
    assert progress["trainLoss"] > 0 and progress["learningRate"] >= 0 and progress["tokensPerSecond"] > 0
    assert progress["etaSeconds"] == 0 and progress["eta"] == "0s"
    assert status["checkpoint"]["step"] == STEPS and status["checkpoint"]["uri"].startswith(f"file://{tmp_path}")
    assert status["evaluation"]["gate"] in ("Passed", "Warned")
    assert status["evaluation"]["task"]["adapterLoss"] > 0 and status["evaluation"]["general"]["baseLoss"] > 0
    artifact = status["artifact"]
    assert artifact["uri"].startswith(f"file://{tmp_path}/output/{namespace}/{NAME}/")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", artifact["digest"]) and artifact["sizeBytes"] > 0
    assert steps_seen == sorted(steps_seen), f"the status went backwards: {steps_seen}"

    row = cluster.run_kubectl("get", "ftj", NAME, "-n", namespace, "--no-headers").stdout.split()
    assert row[2] == "100", row

    finished = json.loads(next(line for line in output.splitlines() if '"progress_push_finished"' in line))
    assert finished["sent"] >= 5 and finished["failed"] == 0 and finished["dropped"] == 0, finished
    assert any(sample.get("finetune_trainer_total_steps") == STEPS for sample in scraped), "no scrape of /metrics"
