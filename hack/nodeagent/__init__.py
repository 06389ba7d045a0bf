"""A local node agent: one node of the test control plane whose pods really run, as local processes.

A tiny kubelet for development and tests (not shipped): it registers a Node, keeps it Ready, and
runs the command of every container of every pod bound to it with this machine's Python
environment, so that a FineTuneJob trains for real (on CPU) without a container engine or root.
kwok keeps simulating the GPU nodes.

    python -m hack.nodeagent --kubeconfig=K --node-name=local-cpu-0 --workdir=DIR
    LocalNodeAgent(kubeconfig, "local-cpu-0", workdir).start() ... .stop()

Pods reach the node with ``nodeSelector: {finetune.dev/local-node: "true"}`` and a toleration of
the taint ``finetune.dev/local-node=true:NoSchedule`` (or ``spec.nodeName``).

Emulated
- Node: labels kubernetes.io/{hostname,os,arch} and finetune.dev/local-node=true, the taint
  above, capacity = this machine's CPUs, memory and disk, 16 pods, no GPUs; the Ready condition
  and a Lease in kube-node-lease renewed every 5 s, the status every 30 s.
- Pods bound to the node (list + watch, relisted on errors and every minute): env (value,
  configMapKeyRef, secretKeyRef, fieldRef incl. metadata.annotations['k'], resourceFieldRef,
  envFrom with prefix, optional refs), $(VAR) in env, command and args; volumes: configMap,
  secret, downwardAPI, projected (serviceAccountToken by TokenRequest bound to the pod with the
  requested audience and expiry, rewritten at 80% of its life; configMap, secret, downwardAPI),
  emptyDir (medium Memory too: a directory), hostPath, persistentVolumeClaim (its bound PV's
  hostPath/local path, else ``<pvc_root>/<namespace>/<claim>``; nothing provisions volumes and
  the scheduler places no pod with an unbound claim, so create a PV with host_path_volume() for
  scheduled pods); subPath and subPathExpr;
  workingDir; init containers in order; restartPolicy Never/OnFailure/Always with a 1 s back-off.
- Status through the status subresource: Pending (waiting ContainerCreating, or
  CreateContainerConfigError while a reference is missing, retried) -> Running (PodScheduled,
  PodReadyToStartContainers, Initialized, ContainersReady, Ready; startedAt; podIP = hostIP =
  127.0.0.1) -> Succeeded/Failed (terminated: exitCode, 128+signal when killed, reason
  Completed/Error, message from the terminationMessagePath file, or with FallbackToLogsOnError
  the end of the log; startedAt, finishedAt). A command that cannot be executed is StartError,
  exit code 128. Events: Started, Killing, FailedMount, Failed.
- Deletion: SIGTERM to the container's process group, SIGKILL after the grace period (the
  deletion's, else terminationGracePeriodSeconds, at least 2 s), terminal status, then DELETE
  with gracePeriodSeconds=0. A pod that was running under an earlier agent fails with
  ContainerStatusUnknown (exit code 137). Stopping the agent stops every process
  (SIGTERM, SIGKILL after 5 s); PR_SET_PDEATHSIG kills them if the agent dies.

The pod's filesystem (what a container sees; container.py and mounttable.py have the details)
- There are no mount namespaces: every container gets ``<workdir>/pods/<ns>_<pod>_<uid>/
  containers/<name>/rootfs``, where each volumeMount is a symbolic link at its mountPath to the
  volume's directory, and the terminationMessagePath (``/dev/termination-log``) a link to the
  container's message file. A *pod path* (a mountPath, anything under one, or a directory above
  one that this machine lacks, such as /var/run/finetune or /mnt/pvc) is translated to
  ``rootfs + path``; other paths are this machine's own.
- The agent translates every env value (colon-separated lists too), every command/args token
  that is a pod path or ``--flag=<pod path>``, and workingDir (default: the rootfs).
- Python processes translate the rest themselves: PYTHONPATH starts with pathhook/, whose
  sitecustomize wraps open() and the os path functions, so a path read from a file (the
  trainer config's /var/run/finetune/progress/token) or written in code resolves too.
- The mapping is on disk for any program: NODEAGENT_MOUNTS names ``mounts.json`` (rootfs,
  mountPath -> local path, virtual directories), NODEAGENT_ROOTFS the rootfs;
  FINETUNE_TERMINATION_LOG names the termination message file unless the pod sets it.
- PATH starts with the agent's bin dir (so ``python`` and ``accelerate`` are its environment);
  HOME is the rootfs unless the pod sets it; KUBERNETES_SERVICE_HOST/PORT name the real API
  server, so in-cluster clients work with the projected kube-api-access token. Of the agent's
  own environment only PATH, LANG, LC_* and TZ reach the pod, plus ``env`` / ``--env``.

Not emulated: images (ignored: the agent's environment runs every command, and a container
without ``command`` cannot start), resource limits and requests (not enforced; only reported
as capacity), securityContext (runAsUser, readOnlyRootFilesystem, capabilities: the processes
run as the agent's user), readOnly mounts, probes (a running container is Ready), lifecycle
hooks, sidecar (restartable init) containers, ports and networking (every pod is 127.0.0.1;
Service DNS such as a Job's subdomain does not resolve), service-link env vars other than
KUBERNETES_SERVICE_*, OOM kills, eviction, pod admission limits, ephemeral containers, and
``kubectl logs``/``exec``/``port-forward`` (no kubelet API: logs are in
``<pod dir>/logs/<container>.log``, see LocalNodeAgent.log_path). Secrets are files under the
work dir with their modes, readable by the agent's user. Paths opened by C code or non-Python
programs are not translated beyond env, args and workingDir.
"""

from .agent import DEFAULT_NODE_NAME, LocalNodeAgent
from .mounttable import MountTable
from .node import NODE_LABEL, NODE_TAINT
from .volumes import host_path_volume

__all__ = ["DEFAULT_NODE_NAME", "NODE_LABEL", "NODE_TAINT", "LocalNodeAgent", "MountTable", "host_path_volume"]
