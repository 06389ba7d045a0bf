"""The local node agent (hack/nodeagent): pods bound to its node really run, and report like a kubelet's."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from catalog import edited, valid_job
from kubehelpers import condition, get, wait_for

from hack.nodeagent import NODE_LABEL, MountTable, host_path_volume
from hack.nodeagent.envvars import expand
from hack.nodeagent.volumes import refresh_time

LOCAL_NODE_TOLERATION = {"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
REPO = Path(__file__).resolve().parents[2]
PATH_HOOK = REPO / "hack" / "nodeagent" / "pathhook"

# A pod's report: what the script saw, as JSON in its termination message (no `kubectl logs` here).
REPORT = """
import json
def report(**seen):
    with open("/dev/termination-log", "w") as handle:
        json.dump(seen, handle)
"""


def python_pod(node: str, name: str, script: str, *, args=(), container=None, spec=None, metadata=None):
    """A pod bound to ``node`` whose container runs ``python -c script args...``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **(metadata or {})},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11-slim",
                    "command": ["python", "-c", REPORT + textwrap.dedent(script)],
                    "args": list(args),
                    **(container or {}),
                }
            ],
            **(spec or {}),
        },
    }


def create(cluster, namespace: str, *manifests: dict[str, Any]) -> None:
    document = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    cluster.run_kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(document))


def phase_is(cluster, namespace: str, name: str, *phases: str):
    def probe():
        pod = get(cluster, "pod", namespace, name)
        return pod if pod and pod.get("status", {}).get("phase") in phases else None

    return probe


def finished(cluster, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    try:
        return wait_for(f"pod {name} to finish", phase_is(cluster, namespace, name, "Succeeded", "Failed"), timeout)
    except AssertionError as error:
        described = cluster.run_kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
        raise AssertionError(f"{error}\n{described}") from None


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = pod["status"]["containerStatuses"]
    return status["state"]["terminated"]


def report_of(pod: dict[str, Any]) -> dict[str, Any]:
    state = terminated(pod)
    assert state["exitCode"] == 0, state
    return json.loads(state["message"])


def gone(cluster, namespace: str, name: str):
    return lambda: get(cluster, "pod", namespace, name) is None


@pytest.fixture
def ns(cluster, namespace):
    """The test's namespace once its default ServiceAccount exists (pods are refused before)."""
    wait_for(
        "the default ServiceAccount",
        lambda: cluster.run_kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
        30,
    )
    return namespace


# ---------------------------------------------------------------------------------------------
# Without the cluster: the rules the agent follows


def test_expansion_follows_kubernetes_rules():
    mapping = {"A": "x", "B": "/scratch"}
    assert expand("$(A)-$(B)/home", mapping) == "x-/scratch/home"
    assert expand("$$(A)", mapping) == "$(A)"
    assert expand("$(UNDEFINED) $(A", mapping) == "$(UNDEFINED) $(A"


def test_only_pod_paths_are_translated(tmp_path):
    rootfs = str(tmp_path / "rootfs")
    targets = {
        "/etc/finetune": str(tmp_path / "config"),
        "/var/run/finetune/credentials/model": str(tmp_path / "creds"),
        "/mnt/pvc/outputs": str(tmp_path / "pvc"),
    }
    table = MountTable.for_mounts(rootfs, targets)
    assert table.translate("/etc/finetune/config.json") == rootfs + "/etc/finetune/config.json"
    assert table.translate("/var/run/finetune/credentials") == rootfs + "/var/run/finetune/credentials"
    assert table.translate("/mnt/pvc") == rootfs + "/mnt/pvc"
    assert table.translate("/etc/passwd") == "/etc/passwd"
    assert table.translate("/var/run") == "/var/run"  # exists here: the machine's own
    assert table.translate("relative/etc/finetune") == "relative/etc/finetune"
    assert table.translate(rootfs + "/etc/finetune") == rootfs + "/etc/finetune"  # already local
    assert table.translate_arg("--config=/etc/finetune/config.json") == f"--config={rootfs}/etc/finetune/config.json"
    assert table.translate_env("/mnt/pvc/outputs:/usr/lib") == f"{rootfs}/mnt/pvc/outputs:/usr/lib"


def test_the_path_hook_shows_python_the_mounts(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "token").write_text("t0ken")
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/run/finetune").mkdir(parents=True)
    (rootfs / "var/run/finetune/progress").symlink_to(volume)
    targets = {"/var/run/finetune/progress": str(volume)}
    MountTable.for_mounts(str(rootfs), targets).dump(str(tmp_path / "mounts.json"), targets)
    script = """
import os, pathlib, shutil
assert open("/var/run/finetune/progress/token").read() == "t0ken"
assert pathlib.Path("/var/run/finetune/progress/token").read_text() == "t0ken"
assert os.listdir("/var/run/finetune") == ["progress"]
os.makedirs("/var/run/finetune/progress/sub/dir")
shutil.copy("/var/run/finetune/progress/token", "/var/run/finetune/progress/sub/copy")
assert os.path.isdir("/usr") and not os.path.exists("/var/run/finetune/nothing")
print(os.path.realpath("/var/run/finetune/progress/token"))
"""
    env = {**os.environ, "NODEAGENT_MOUNTS": str(tmp_path / "mounts.json"), "PYTHONPATH": str(PATH_HOOK)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(volume / "token")
    assert (volume / "sub" / "copy").read_text() == "t0ken"


def test_projected_tokens_are_refreshed_at_80_percent_of_their_life():
    assert refresh_time(1000.0, 3600) == 1000.0 + 2880.0
    assert refresh_time(0.0, 7 * 24 * 3600) == pytest.approx(0.8 * 24 * 3600)  # at least daily, as the kubelet does


# ---------------------------------------------------------------------------------------------
# The node


def test_the_node_is_ready_tainted_and_sized_like_this_machine(cluster, local_node):
    node = json.loads(cluster.run_kubectl("get", "node", local_node.node_name, "-o", "json").stdout)
    assert condition(node, "Ready")["status"] == "True"
    assert node["metadata"]["labels"][NODE_LABEL] == "true"
    assert {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert node["status"]["capacity"]["cpu"] == str(os.cpu_count())
    assert node["status"]["capacity"]["pods"] == "16"
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    lease = json.loads(
        cluster.run_kubectl("get", "lease", local_node.node_name, "-n", "kube-node-lease", "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"] == local_node.node_name


# ---------------------------------------------------------------------------------------------
# Pods


def test_a_pod_reports_running_then_succeeded(cluster, ns, local_node, tmp_path):
    script = """
    import os, time
    while not os.path.exists("/gate/open"):
        time.sleep(0.05)
    """
    pod = python_pod(
        local_node.node_name,
        "gated",
        script,
        container={"volumeMounts": [{"name": "gate", "mountPath": "/gate"}]},
        spec={"volumes": [{"name": "gate", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]},
    )
    create(cluster, ns, pod)

    running = wait_for("Running", phase_is(cluster, ns, "gated", "Running"), 30)
    (status,) = running["status"]["containerStatuses"]
    assert status["ready"] is True and status["state"]["running"]["startedAt"]
    assert running["status"]["podIP"] == running["status"]["hostIP"] == "127.0.0.1"
    for type_ in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        assert condition(running, type_)["status"] == "True", type_

    (tmp_path / "open").touch()
    done = finished(cluster, ns, "gated")
    assert done["status"]["phase"] == "Succeeded"
    state = terminated(done)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert state["startedAt"] <= state["finishedAt"]
    assert condition(done, "Ready")["reason"] == "PodCompleted"


def test_env_comes_from_config_maps_secrets_field_refs_and_expansion(cluster, ns, local_node):
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"greeting": "hi"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    env = [
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['finetune.dev/rank']"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "COMBINED", "value": "$(GREETING)-$(RANK)"},
    ]
    script = """
    import os, sys
    names = ["GREETING", "TOKEN", "RANK", "POD", "IP", "COMBINED", "CFG_greeting"]
    report(env={name: os.environ.get(name) for name in names}, argv=sys.argv[1:])
    """
    pod = python_pod(
        local_node.node_name,
        "env",
        script,
        args=["$(GREETING)", "rank=$(RANK)", "$$(RANK)", "$(UNDEFINED)"],
        metadata={"annotations": {"finetune.dev/rank": "7"}},
        container={"env": env, "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}]},
    )
    create(cluster, ns, config_map, secret, pod)

    seen = report_of(finished(cluster, ns, "env"))
    assert seen["env"] == {
        "GREETING": "hi",
        "TOKEN": "s3cr3t",
        "RANK": "7",
        "POD": "env",
        "IP": "127.0.0.1",
        "COMBINED": "hi-7",
        "CFG_greeting": "hi",
    }
    assert seen["argv"] == ["hi", "rank=7", "$(RANK)", "$(UNDEFINED)"]


def test_a_pod_waits_for_a_missing_config_map_then_runs(cluster, ns, local_node):
    env = [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "greeting"}}}]
    pod = python_pod(local_node.node_name, "waits", "report(greeting=__import__('os').environ['GREETING'])")
    pod["spec"]["containers"][0]["env"] = env
    create(cluster, ns, pod)

    def waiting_reason():
        found = get(cluster, "pod", ns, "waits")
        statuses = (found or {}).get("status", {}).get("containerStatuses") or [{}]
        return (statuses[0].get("state") or {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"

    wait_for("CreateContainerConfigError", waiting_reason, 30)
    create(
        cluster, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}, "data": {"greeting": "hi"}}
    )
    assert report_of(finished(cluster, ns, "waits")) == {"greeting": "hi"}


def test_volumes_are_read_at_their_mount_paths(cluster, ns, local_node):
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app"},
        "data": {"greeting": "hello", "farewell": "bye"},
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": {"key": "k3y"}}
    volumes = [
        {"name": "app", "configMap": {"name": "app"}},
        {"name": "items", "configMap": {"name": "app", "items": [{"key": "farewell", "path": "sub/renamed.txt"}]}},
        {"name": "keys", "secret": {"secretName": "keys", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "app", "mountPath": "/etc/app", "readOnly": True},
        {"name": "items", "mountPath": "/etc/items"},
        {"name": "keys", "mountPath": "/var/run/secrets/app"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    init = {
        "name": "prepare",
        "image": "busybox",
        "command": ["python", "-c", "open('/scratch/from-init', 'w').write('made by init')"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    script = """
    import os, pathlib, stat, sys
    open("/dev/shm/probe", "w").write("shm")
    report(
        listing=sorted(os.listdir("/etc/app")),
        greeting=open("/etc/app/greeting").read(),
        item=pathlib.Path("/etc/items/sub/renamed.txt").read_text(),
        key=open("/var/run/secrets/app/key").read(),
        key_mode=oct(stat.S_IMODE(os.stat("/var/run/secrets/app/key").st_mode)),
        from_init=open("/scratch/from-init").read(),
        shm=open("/dev/shm/probe").read(),
        env_path=open(os.path.join(os.environ["APP_DIR"], "farewell")).read(),
        env_is_local=os.environ["APP_DIR"].startswith(os.environ["NODEAGENT_ROOTFS"]),
        arg=open(sys.argv[1].split("=", 1)[1]).read(),
        cwd=os.getcwd(),
        home=os.environ["HOME"],
    )
    """
    pod = python_pod(
        local_node.node_name,
        "volumes",
        script,
        args=["--greeting=/etc/app/greeting"],
        container={"volumeMounts": mounts, "env": [{"name": "APP_DIR", "value": "/etc/app"}], "workingDir": "/scratch"},
        spec={"volumes": volumes, "initContainers": [init]},
    )
    create(cluster, ns, config_map, secret, pod)

    done = finished(cluster, ns, "volumes")
    seen = report_of(done)
    rootfs = local_node.pod_directory(ns, "volumes") / "containers" / "main" / "rootfs"
    assert seen == {
        "listing": ["farewell", "greeting"],
        "greeting": "hello",
        "item": "bye",
        "key": "k3y",
        "key_mode": "0o400",
        "from_init": "made by init",
        "shm": "shm",
        "env_path": "bye",
        "env_is_local": True,
        "arg": "hello",
        "cwd": str((rootfs / "scratch").resolve()),  # the emptyDir behind the link
        "home": str(rootfs),
    }
    (init_status,) = done["status"]["initContainerStatuses"]
    assert init_status["state"]["terminated"]["exitCode"] == 0


def test_a_projected_token_has_the_audience_and_is_bound_to_the_pod(cluster, ns, local_node):
    audience = "finetune-progress-test"
    volume = {
        "name": "progress-token",
        "projected": {
            "defaultMode": 0o440,
            "sources": [{"serviceAccountToken": {"audience": audience, "expirationSeconds": 600, "path": "token"}}],
        },
    }
    mount = {"name": "progress-token", "mountPath": "/var/run/finetune/progress", "readOnly": True}
    script = 'report(token=open("/var/run/finetune/progress/token").read())'
    pod = python_pod(
        local_node.node_name, "token", script, container={"volumeMounts": [mount]}, spec={"volumes": [volume]}
    )
    create(cluster, ns, pod)
    done = finished(cluster, ns, "token")
    token = report_of(done)["token"]

    def review(audiences: list[str]) -> dict[str, Any]:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        out = cluster.run_kubectl("create", "-o", "json", "-f", "-", input=json.dumps(request)).stdout
        return json.loads(out)["status"]

    status = review([audience])
    assert status["authenticated"] is True
    assert status["audiences"] == [audience]
    assert status["user"]["username"] == f"system:serviceaccount:{ns}:default"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["token"]
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [done["metadata"]["uid"]]
    assert not review(["https://kubernetes.default.svc.cluster.local"]).get("authenticated")


def test_an_exit_code_and_termination_message_fail_the_pod(cluster, ns, local_node):
    script = """
    import sys
    open("/dev/termination-log", "w").write("bad record at line 3")
    sys.exit(3)
    """
    create(cluster, ns, python_pod(local_node.node_name, "fails", script))
    done = finished(cluster, ns, "fails")
    assert done["status"]["phase"] == "Failed"
    state = terminated(done)
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "bad record at line 3")


def test_fallback_to_logs_on_error_reports_the_end_of_the_log(cluster, ns, local_node):
    script = """
    import sys
    print("loading"); print("Traceback: out of patience", flush=True)
    sys.exit(1)
    """
    pod = python_pod(
        local_node.node_name, "falls-back", script, container={"terminationMessagePolicy": "FallbackToLogsOnError"}
    )
    create(cluster, ns, pod)
    state = terminated(finished(cluster, ns, "falls-back"))
    assert state["exitCode"] == 1
    assert state["message"].splitlines()[-1] == "Traceback: out of patience"
    assert "Traceback: out of patience" in local_node.log_path(ns, "falls-back", "main").read_text()


def test_a_jobs_pod_is_scheduled_onto_the_local_node_and_the_job_completes(cluster, ns, local_node):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {NODE_LABEL: "true"},
                    "tolerations": [LOCAL_NODE_TOLERATION],
                    "containers": [{"name": "main", "image": "python", "command": ["python", "-c", "print('hi')"]}],
                }
            },
        },
    }
    create(cluster, ns, job)
    wait_for(
        "the Job to complete",
        lambda: (condition(get(cluster, "job", ns, "hello"), "Complete") or {}).get("status") == "True",
        60,
    )
    (pod,) = json.loads(cluster.run_kubectl("get", "pods", "-n", ns, "-l", "job-name=hello", "-o", "json").stdout)[
        "items"
    ]
    assert pod["spec"]["nodeName"] == local_node.node_name
    assert terminated(pod)["exitCode"] == 0


def test_deleting_a_running_pod_sends_sigterm_and_removes_it(cluster, ns, local_node, tmp_path):
    script = """
    import signal, sys, time
    def stop(*_):
        open("/out/terminated", "w").write("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    open("/out/ready", "w").close()
    while True:
        time.sleep(0.05)
    """
    pod = python_pod(
        local_node.node_name,
        "graceful",
        script,
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
        spec={"volumes": [{"name": "out", "hostPath": {"path": str(tmp_path)}}], "terminationGracePeriodSeconds": 30},
    )
    create(cluster, ns, pod)
    wait_for("the handler", lambda: (tmp_path / "ready").exists(), 30)

    started = time.monotonic()
    cluster.run_kubectl("delete", "pod", "graceful", "-n", ns, "--wait=false")
    wait_for("the pod to be removed", gone(cluster, ns, "graceful"), 30)
    assert time.monotonic() - started < 10  # well inside the 30 s grace period: it stopped on SIGTERM
    assert (tmp_path / "terminated").read_text() == "SIGTERM"


def test_a_pod_that_ignores_sigterm_is_killed_after_its_grace_period(cluster, ns, local_node, tmp_path):
    script = """
    import os, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open("/out/pid", "w").write(str(os.getpid()))
    while True:
        time.sleep(0.05)
    """
    pod = python_pod(
        local_node.node_name,
        "stubborn",
        script,
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
        spec={"volumes": [{"name": "out", "hostPath": {"path": str(tmp_path)}}], "terminationGracePeriodSeconds": 2},
    )
    create(cluster, ns, pod)
    wait_for("the process", lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), 30)
    pid = int((tmp_path / "pid").read_text())

    started = time.monotonic()
    cluster.run_kubectl("delete", "pod", "stubborn", "-n", ns, "--wait=false")
    wait_for("the pod to be removed", gone(cluster, ns, "stubborn"), 30)
    assert 2 <= time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_in_cluster_clients_reach_the_api_server_as_the_pods_service_account(cluster, ns, local_node):
    script = """
    from kubernetes import client, config
    config.load_incluster_config()  # the kube-api-access volume and KUBERNETES_SERVICE_HOST/PORT
    try:
        client.CoreV1Api().list_namespaced_pod("kube-system")
    except client.ApiException as error:
        report(status=error.status, message=json.loads(error.body)["message"])
    """
    pod = python_pod(local_node.node_name, "in-cluster", script, spec={"automountServiceAccountToken": True})
    create(cluster, ns, pod)
    seen = report_of(finished(cluster, ns, "in-cluster"))
    assert seen["status"] == 403
    assert f'User "system:serviceaccount:{ns}:default" cannot list' in seen["message"]


def test_on_failure_restarts_the_container_in_place(cluster, ns, local_node):
    script = """
    import os, sys
    if not os.path.exists("/scratch/tried"):
        open("/scratch/tried", "w").close()
        sys.exit(1)
    """
    pod = python_pod(
        local_node.node_name,
        "retries",
        script,
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        spec={"restartPolicy": "OnFailure", "volumes": [{"name": "scratch", "emptyDir": {}}]},
    )
    create(cluster, ns, pod)
    done = finished(cluster, ns, "retries")
    assert done["status"]["phase"] == "Succeeded"
    (status,) = done["status"]["containerStatuses"]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1


def test_a_claim_without_a_local_volume_lives_under_the_pvc_root(cluster, ns, local_node):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "unbound"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    pod = python_pod(
        local_node.node_name,
        "claims",
        'open("/mnt/pvc/unbound/out.txt", "w").write("kept"); report()',
        container={"volumeMounts": [{"name": "data", "mountPath": "/mnt/pvc/unbound"}]},
        spec={"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "unbound"}}]},
    )
    create(cluster, ns, claim, pod)
    assert report_of(finished(cluster, ns, "claims")) == {}
    assert (local_node.pvc_root / ns / "unbound" / "out.txt").read_text() == "kept"


SLEEPER = """
import os, time
open("/out/pid", "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def agent_process(cluster, tmp_path):
    """Start the agent's CLI for a node of its own; killed and its node deleted afterwards."""
    node = f"local-cli-{os.getpid()}-{time.monotonic_ns() % 100000}"
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = (tmp_path / "agent.log").open("ab")
        argv = [sys.executable, "-m", "hack.nodeagent", f"--kubeconfig={cluster.kubeconfig}", f"--node-name={node}"]
        argv += [f"--workdir={tmp_path / 'agent'}", "--ready-timeout=0"]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        started.append(process)
        log.close()
        wait_for("the agent", lambda: f"node {node} is up" in (tmp_path / "agent.log").read_text(), 30)
        return process

    start.node = node
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
    cluster.run_kubectl("delete", "node", node, "--wait=false", check=False)


def sleeper_pod(node: str, name: str, out: Path) -> dict[str, Any]:
    return python_pod(
        node,
        name,
        SLEEPER,
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
        spec={"volumes": [{"name": "out", "hostPath": {"path": str(out)}}]},
    )


def started_pid(out: Path) -> int:
    return int(wait_for("the process", lambda: (out / "pid").exists() and (out / "pid").read_text(), 30))


def test_stopping_the_agent_stops_its_pods_processes(cluster, ns, agent_process, tmp_path):
    agent = agent_process()
    create(cluster, ns, sleeper_pod(agent_process.node, "sleeper", tmp_path))
    pid = started_pid(tmp_path)

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    state = terminated(finished(cluster, ns, "sleeper"))
    assert state["exitCode"] == 128 + signal.SIGTERM


def test_an_agent_killed_outright_takes_its_processes_along_and_its_successor_fails_the_pod(
    cluster, ns, agent_process, tmp_path
):
    agent = agent_process()
    create(cluster, ns, sleeper_pod(agent_process.node, "orphan", tmp_path))
    pid = started_pid(tmp_path)

    agent.kill()
    agent.wait()
    wait_for("PR_SET_PDEATHSIG to kill the process", lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert get(cluster, "pod", ns, "orphan")["status"]["phase"] == "Running"

    agent_process()
    done = finished(cluster, ns, "orphan")
    assert done["status"]["phase"] == "Failed"
    assert (terminated(done)["exitCode"], terminated(done)["reason"]) == (137, "ContainerStatusUnknown")


# ---------------------------------------------------------------------------------------------
# The operator's trainer pod, as rendered, finds every path the trainer uses


PROBE = """
import json, os, shutil, sys
config = json.load(open(sys.argv[1].split("=", 1)[1]))
progress = config["progress"]
credentials = os.environ["FINETUNE_CREDENTIALS_DIR"]
output = os.path.join(os.environ["FINETUNE_PVC_ROOT"], "outputs", "runs")
os.makedirs(output, exist_ok=True)
open(os.path.join(output, "probe"), "w").write("written")
for name in ("HOME", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME", "FINETUNE_SCRATCH_DIR"):
    os.makedirs(os.environ[name], exist_ok=True)
open("/dev/shm/probe", "w").write("shm")
seen = dict(
    job=config["job"]["name"],
    token=len(open(progress["tokenFile"]).read()) > 100,
    ca=open(progress["caFile"]).read(),
    credentials={p: sorted(os.listdir(os.path.join(credentials, p))) for p in sorted(os.listdir(credentials))},
    hub_token=open(os.path.join(credentials, "model", "HF_TOKEN")).read(),
    rank=os.environ["MACHINE_RANK"],
    pod=os.environ["POD_NAME"],
    accelerate=shutil.which("accelerate") == os.path.join(os.path.dirname(sys.executable), "accelerate"),
    scratch=os.environ["FINETUNE_SCRATCH_DIR"].startswith(os.environ["NODEAGENT_ROOTFS"] + "/scratch"),
)
with open(os.environ["FINETUNE_TERMINATION_LOG"], "w") as handle:
    json.dump(seen, handle)
"""


def test_the_operators_trainer_pod_finds_every_path_the_trainer_uses(cluster, ns, local_node, tmp_path, request):
    from finetune_core.api import FineTuneJob
    from finetune_operator.render import render_config_map, render_pod_template, resolve_trainer_config
    from finetune_operator.settings import Settings

    manifest = edited(
        valid_job("probe"),
        {
            "metadata.namespace": ns,
            "metadata.uid": "00000000-0000-0000-0000-000000000001",
            "spec.model.credentialsSecretRef": {"name": "hub"},
            "spec.output.uri": "pvc://outputs/runs",
            "spec.resources": {"gpusPerNode": 0, "cpu": "1", "memory": "1Gi"},
            "spec.template.nodeSelector": {NODE_LABEL: "true"},
            "spec.template.tolerations": [LOCAL_NODE_TOLERATION],
            "spec.template.serviceAccountName": "default",
        },
    )
    job = FineTuneJob.model_validate(manifest)
    settings = Settings(progress_url="https://127.0.0.1:9443")
    config_map = render_config_map(job, resolve_trainer_config(job, settings, progress_ca=True), "PEM")
    config_map["metadata"].pop("ownerReferences")  # no FineTuneJob owns them here: the collector would delete them
    template = render_pod_template(job, settings)
    (trainer,) = template["spec"]["containers"]
    config_argument = [*trainer["command"], *trainer.get("args", [])][-1]
    assert config_argument == "--config=/etc/finetune/config.json"
    trainer.update(command=["python", "-c", PROBE], args=[config_argument])  # the trainer's own argument
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "probe-0",
            "labels": template["metadata"]["labels"],
            "annotations": {**template["metadata"]["annotations"], "batch.kubernetes.io/job-completion-index": "0"},
        },
        "spec": template["spec"],
    }
    hub = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub"}, "data": {"HF_TOKEN": _b64("hf_x")}}
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "outputs"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    # The scheduler places no pod whose claim is unbound: a local volume reserved for the claim.
    volume = host_path_volume(f"{ns}-outputs", tmp_path / "outputs", ns, "outputs")
    cluster.run_kubectl("create", "-f", "-", input=json.dumps(volume))
    create(cluster, ns, config_map, hub, claim, pod)
    request.addfinalizer(lambda: cluster.run_kubectl("delete", "pv", volume["metadata"]["name"], "--wait=false"))

    done = finished(cluster, ns, "probe-0", timeout=60)
    assert done["spec"]["nodeName"] == local_node.node_name
    assert report_of(done) == {
        "job": "probe",
        "token": True,
        "ca": "PEM",
        "credentials": {"model": ["HF_TOKEN"]},
        "hub_token": "hf_x",
        "rank": "0",
        "pod": "probe-0",
        "accelerate": True,
        "scratch": True,
    }
    assert (tmp_path / "outputs" / "runs" / "probe").read_text() == "written"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
