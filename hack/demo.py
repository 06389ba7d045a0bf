"""The quickstart, end to end on this machine (make demo / make demo-down).

    python -m hack.demo up     start everything, run examples/quickstart.yaml, show its progress, print the result
    python -m hack.demo down   stop everything
    python -m hack.demo serve  (internal) the supervisor that owns every process of the demo

(from the repository root, as the Makefile runs it).

What runs: the test control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok),
MinIO as the S3 store, the operator (as a process, with its HTTPS progress endpoint), the
OpenAI-compatible API (as a process, HTTPS, as the chart's ServiceAccount with the chart's RBAC), and
the local node agent, which runs the training pod's container command on this machine's CPU. A tiny
Llama and its tokenizer are built here (no network) and uploaded to MinIO with the bundled dataset;
examples/catalog.yaml offers it to namespace demo. Everything stays up after `up` so you can look
around with kubectl or the `openai` package (a token of a tenant ServiceAccount of namespace demo);
`down` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .localcluster import LocalCluster, free_port
from .localcluster.openai_api import OpenAIApiProcess, chart_identity, tenant_token
from .localcluster.supervisor import Supervisor, SupervisorError

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "demo"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "finetune-system"
SUPERVISOR = Supervisor(STATE_DIR)
QUICKSTART = REPO / "examples" / "quickstart.yaml"
CATALOG = REPO / "examples" / "catalog.yaml"
DATA = REPO / "examples" / "data" / "quickstart"
JOB = "ticket-triage"
ADAPTER = "ticket-triage-v1"
# Where jobs made through the API run: the local node agent's node, as the quickstart's template says.
LOCAL_NODE = {
    "nodeSelector": {"finetune.dev/local-node": "true"},
    "tolerations": [{"key": "finetune.dev/local-node", "operator": "Exists", "effect": "NoSchedule"}],
}
# What `up` prints and runs last: the demo's job, its events and its model, with the official SDK.
SNIPPET = """\
import os, ssl, openai  # the client reads OPENAI_BASE_URL and OPENAI_API_KEY from the environment
client = openai.OpenAI(http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=os.environ["FINETUNE_CA"])))
job = client.fine_tuning.jobs.list().data[0]
print(job.id, job.status, job.model, job.fine_tuned_model)
print(*[e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=6)], sep="\\n")
print([model.id for model in client.models.list()])
"""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


# -- the supervisor ------------------------------------------------------------------------------


def build_base_model(out: Path) -> Path:
    from .tinymodels import build_tiny_model

    corpus = []
    for name in ("train.jsonl", "general.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            row = json.loads(line)
            corpus += [m["content"] for m in row.get("messages", [])] + ([row["text"]] if "text" in row else [])
    return build_tiny_model(
        out, corpus=corpus, vocab_size=1024, hidden_size=128, layers=4, heads=4, kv_heads=2, intermediate_size=256
    )


def upload_directory(client, bucket: str, prefix: str, directory: Path) -> None:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")


def serve() -> int:
    from .localcluster.minio import MinioServer
    from .localcluster.operator_process import OperatorProcess
    from .nodeagent import LocalNodeAgent

    run = STATE_DIR / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cluster = LocalCluster(workdir=run / "cluster")
    minio = MinioServer(data_dir=run / "minio")
    operator = agent = api = None
    try:
        cluster.start()
        cluster.install_crds()
        minio.start()
        s3 = minio.client()
        for bucket in ("models", "datasets", "adapters", "files"):
            minio.create_bucket(bucket)
        upload_directory(s3, "models", "tiny-llama", build_base_model(run / "tiny-llama"))
        upload_directory(s3, "datasets", "quickstart", DATA)

        for namespace in (NAMESPACE, OPERATOR_NAMESPACE):
            cluster.run_kubectl("create", "namespace", namespace)
        keys = [f"--from-literal={k}={v}" for k, v in minio.credentials.items()]
        cluster.run_kubectl("create", "secret", "generic", "s3-creds", "-n", NAMESPACE, *keys)
        cluster.run_kubectl("apply", "--server-side", "-f", str(CATALOG))

        # The self-service API as the chart runs it; its start-up overlaps the operator's.
        api_kubeconfig, _ = chart_identity(cluster, OPERATOR_NAMESPACE, run)
        api = OpenAIApiProcess(
            api_kubeconfig,
            run / "api",
            "s3://files/uploads/",
            minio.credentials,
            "--job-data-secret=s3-creds",
            f"--job-template={json.dumps(LOCAL_NODE)}",
        ).launch()
        token = run / "api" / f"{NAMESPACE}.token"
        token.write_text(tenant_token(cluster, NAMESPACE, duration="24h"))
        token.chmod(0o600)

        progress_port, metrics_port = free_port(), free_port()
        operator = OperatorProcess(
            cluster.kubeconfig,
            run / "operator.log",
            f"--progress-port={progress_port}",
            f"--progress-url=https://127.0.0.1:{progress_port}",
            f"--metrics-port={metrics_port}",
            "--metrics-secure=false",  # the local development setting: plain HTTP on 127.0.0.1, no token
            f"--operator-namespace={OPERATOR_NAMESPACE}",
            "--preflight=true",  # as the chart installs it: the job is planned on CPU before it trains
            "--log-format=text",
            env={"FINETUNE_DEFAULT_OUTPUT_URI": "", "FINETUNE_S3_ENDPOINT": minio.endpoint},
        ).start()
        agent = LocalNodeAgent(cluster.kubeconfig, workdir=run / "node")
        agent.start()
        api.wait()
        SUPERVISOR.publish(
            {
                "kubeconfig": str(cluster.kubeconfig),
                "kubectl": cluster.kubectl,
                "minio": minio.credentials,
                "operator_log": str(run / "operator.log"),
                "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
                "node_dir": str(run / "node"),
                "api_url": api.url,
                "api_ca": str(api.ca_file),
                "api_token": str(token),
                "api_log": str(api.log_path),
            }
        )
        SUPERVISOR.serve_until_stopped()
    finally:
        SUPERVISOR.withdraw()
        if agent is not None:
            agent.stop()
        if api is not None:
            api.stop()
        if operator is not None:
            operator.stop()
        minio.stop()
        cluster.stop()
    return 0


# -- the user's side -----------------------------------------------------------------------------


def kubectl(state: dict, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [state["kubectl"], f"--kubeconfig={state['kubeconfig']}", *args], capture_output=True, text=True
    )
    if check and result.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def get(state: dict, kind: str, name: str) -> dict | None:
    out = kubectl(state, "get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out) if out else None


def conditions(obj: dict | None) -> dict[str, dict]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def follow(state: dict, timeout: float = 900) -> dict:
    """Print the job's row whenever it changes, like `kubectl get ftj -w`, until it finishes."""
    say(f"kubectl get ftj {JOB} -n {NAMESPACE} (refreshing)")
    header_printed, last, deadline = False, None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        cells = table_cells(kubectl(state, "get", "ftj", JOB, "-n", NAMESPACE, check=False))
        if cells is not None:
            header, row = cells
            if not header_printed:
                print(aligned(header, header), flush=True)
                header_printed = True
            if row[:-1] != last:  # all but AGE, which changes every second
                print(aligned(row, header), flush=True)
                last = row[:-1]
        job = get(state, "ftj", JOB)
        found = conditions(job)
        finished = found.get("Failed", {}).get("status") == "True" or (
            found.get("Succeeded", {}).get("status") == "True" and "Published" in found
        )
        if finished:
            cells = table_cells(kubectl(state, "get", "ftj", JOB, "-n", NAMESPACE, check=False))
            if cells is not None and cells[1][:-1] != last:
                print(aligned(cells[1], cells[0]), flush=True)
            return job
        time.sleep(1)
    sys.exit("the job did not finish in time")


def table_cells(output: str) -> tuple[list[str], list[str]] | None:
    """kubectl's header and row, cut where the header's columns start: empty cells stay in place. Each call
    pads its own table, so rows printed one call at a time would not line up without this."""
    lines = output.splitlines()
    if len(lines) < 2:
        return None
    header, row = lines[0], lines[1]
    starts = [i for i, char in enumerate(header) if char != " " and (i == 0 or header[i - 1] == " ")]
    ends = [*starts[1:], None]

    def cut(line: str) -> list[str]:
        return [line[start:end].strip() for start, end in zip(starts, ends, strict=True)]

    return cut(header), cut(row)


# Wide enough for the demo's values, so every refreshed row lines up with the first header.
COLUMN_WIDTHS = {"NAME": 16, "STATUS": 11, "QUEUE": 7, "PROGRESS": 10, "LOSS": 8, "ETA": 6, "EST": 6, "ADAPTER": 18}


def aligned(cells: list[str], header: list[str]) -> str:
    widths = [max(COLUMN_WIDTHS.get(name, 0), len(cell) + 1) for name, cell in zip(header, cells, strict=True)]
    return "".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def show_plan(job: dict) -> None:
    """What the CPU preflight counted and estimated before training, next to what training then took."""
    plan = job["status"].get("plan")
    if not plan:
        return
    examples, tokens, estimate = plan.get("examples") or {}, plan.get("tokens") or {}, plan.get("estimate") or {}
    say("the plan (CPU preflight, before the training Job existed)")
    print(
        f"  examples:  {examples.get('train', 0):,} train, {examples.get('eval', 0):,} eval, "
        f"{examples.get('general', 0):,} general"
    )
    print(
        f"  tokens:    {tokens.get('train', 0):,} train, {tokens.get('eval', 0):,} eval, {tokens.get('general', 0):,} general"
    )
    print(f"  steps:     {plan.get('steps')} ({plan.get('epochs')} epochs)")
    if estimate:
        print(
            f"  estimate:  {estimate.get('duration')} of training, {estimate.get('gpuHours')} GPU-hours, at "
            f"{estimate.get('tokensPerSecond')} tokens/s ({estimate.get('source')}: {estimate.get('key')})"
        )
    if plan.get("actualSeconds") is not None:
        print(f"  actual:    {plan['actualSeconds']:.0f}s of training")


def report(state: dict, job: dict) -> int:
    found = conditions(job)
    if found.get("Failed", {}).get("status") == "True":
        say(f"the job failed: {found['Failed']['reason']}: {found['Failed']['message']}")
        print(f"operator log: {state['operator_log']}\npod logs: {state['node_dir']}/pods/*/logs/")
        return 1
    show_plan(job)
    evaluation = job["status"].get("evaluation") or {}
    task, general = evaluation.get("task") or {}, evaluation.get("general") or {}
    say("evaluation (base model -> fine-tuned adapter, mean token loss on held-out data)")
    print(
        f"  task (held-out tickets):  {task.get('baseLoss', float('nan')):.3f} -> {task.get('adapterLoss', float('nan')):.3f}"
    )
    print(
        f"  general text:             {general.get('baseLoss', float('nan')):.3f} -> {general.get('adapterLoss', float('nan')):.3f}"
    )
    print(f"  gate: {evaluation.get('gate')}: {evaluation.get('message')}")
    if found.get("Published", {}).get("status") != "True":
        say(f"not published: {found.get('Published', {}).get('message')}")
        return 1
    deadline = time.monotonic() + 120
    while (adapter := get(state, "modeladapters.finetune.dev", ADAPTER)) and (adapter.get("status") or {}).get(
        "phase"
    ) != "Ready":
        if time.monotonic() > deadline or (adapter.get("status") or {}).get("phase") == "Failed":
            break
        time.sleep(1)
    say(f"kubectl get modeladapters.finetune.dev -n {NAMESPACE}")
    print(kubectl(state, "get", "modeladapters.finetune.dev", "-n", NAMESPACE, "-o", "wide"), end="")
    spec, status = adapter["spec"], adapter.get("status") or {}
    say("the adapter")
    print(f"  phase:     {status.get('phase')}  ({conditions(adapter).get('Ready', {}).get('message')})")
    print(f"  artifact:  {spec['artifact']['uri']}")
    print(f"  digest:    {spec['artifact'].get('digest')}")
    print(f"  base:      {spec['baseModel']['uri']}  (vLLM: --max-lora-rank {status.get('requiredMaxLoraRank')})")
    print(f"  S3:        {state['minio']['AWS_ENDPOINT_URL']} (key {state['minio']['AWS_ACCESS_KEY_ID']})")
    return 0 if status.get("phase") == "Ready" else 1


def self_service(state: dict) -> int:
    """How a tenant reaches the demo through the OpenAI-compatible API, and the snippet, run for real."""
    say(f"the self-service API (OpenAI-compatible), as a tenant of namespace {NAMESPACE}")
    print(f"  base URL:  {state['api_url']}")
    print(f"  token:     {state['api_token']}")
    print(
        f"             (ServiceAccount {NAMESPACE}/app, bound by a Role to FineTuneJobs and ModelAdapters of {NAMESPACE} only; 24h)"
    )
    print(f"  CA:        {state['api_ca']}  (the API's own; HTTPS only)")
    exports = {
        "OPENAI_BASE_URL": state["api_url"],
        "OPENAI_API_KEY": f"$(cat {state['api_token']})",
        "FINETUNE_CA": state["api_ca"],
    }
    print("  export " + " ".join(f"{name}={value}" for name, value in exports.items()))
    say("python (the official openai package)")
    print(SNIPPET, end="")
    environment = {**os.environ, **exports, "OPENAI_API_KEY": Path(state["api_token"]).read_text().strip()}
    result = subprocess.run([sys.executable, "-c", SNIPPET], env=environment, capture_output=True, text=True)
    say("its output")
    print(result.stdout + result.stderr, end="", flush=True)
    if result.returncode != 0:
        print(f"API log: {state['api_log']}")
    return result.returncode


def up() -> int:
    started = time.monotonic()
    state = SUPERVISOR.running()
    if state is None:
        say("starting the control plane, MinIO, the operator and the local node (binaries are built on first use)")
        try:
            state = SUPERVISOR.start(__spec__.name, REPO, timeout=1800)  # a first run builds the binaries
        except SupervisorError as error:
            sys.exit(f"the demo environment did not start: {error}")
    else:
        say("the demo environment is already running; running the quickstart again")
        kubectl(state, "delete", "ftj", JOB, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        kubectl(state, "delete", "modeladapters.finetune.dev", ADAPTER, "-n", NAMESPACE, "--ignore-not-found")
    say(f"environment ready in {time.monotonic() - started:.0f}s; kubectl apply -f examples/quickstart.yaml")
    print(kubectl(state, "apply", "-f", str(QUICKSTART)), end="")
    job = follow(state)
    code = report(state, job)
    code = self_service(state) or code
    say(f"still running; look around with: export KUBECONFIG={state['kubeconfig']}; stop it with: make demo-down")
    say(f"done in {time.monotonic() - started:.0f}s")
    return code


def down() -> int:
    say("demo stopped" if SUPERVISOR.stop() else "the demo is not running")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "serve"])
    return {"up": up, "down": down, "serve": serve}[parser.parse_args().command]()


if __name__ == "__main__":
    sys.exit(main())
