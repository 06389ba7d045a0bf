"""What one container runs: its rootfs of mount links, its environment, its argv and working directory.

The process sees (see the package docstring for the whole contract):

- the working directory: ``workingDir`` translated, else the container's rootfs (a pod's ``/``);
- env: the pod's env and envFrom, resolved and $(VAR)-expanded as pod values, then each value
  translated (MountTable.translate_env); PATH starts with the agent's bin dir (its Python
  environment); PYTHONPATH starts with the path hook; HOME is the rootfs unless the pod sets it;
  KUBERNETES_SERVICE_HOST/PORT name the real API server; NODEAGENT_ROOTFS and NODEAGENT_MOUNTS
  (the mapping file) describe the mounts; FINETUNE_TERMINATION_LOG names the termination
  message file unless the pod sets it;
- argv: command + args, $(VAR)-expanded, then each token translated (MountTable.translate_arg).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .envvars import ConfigError, Lookup, expand, resolve_env
from .mounttable import MountTable
from .process import StartError

PATH_HOOK = Path(__file__).resolve().parent / "pathhook"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")  # the rest of the agent's own env stays out


@dataclass(frozen=True)
class NodeSettings:
    """What every container on this node shares."""

    bin_dir: Path
    api_server: str
    allocatable: dict[str, str]
    extra_env: dict[str, str] = field(default_factory=dict)
    path_hook: bool = True


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    termination_log: Path
    table: MountTable


def prepare_container(
    pod: dict[str, Any],
    container: dict[str, Any],
    volume_paths: dict[str, Path],
    directory: Path,
    log: Path,
    lookup: Lookup,
    node: NodeSettings,
) -> Launch:
    """Lay out the container's rootfs and compute its process; ConfigError/StartError say why it cannot start."""
    pod_env = resolve_env(pod, container, lookup, node.allocatable)
    service_env = _service_env(node.api_server)
    rootfs = directory / "rootfs"
    termination_log = directory / "termination-log"
    targets = _mount_targets(container, volume_paths, {**service_env, **pod_env})
    message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    targets[message_path] = str(termination_log)
    _build_rootfs(rootfs, targets)
    termination_log.write_bytes(b"")
    table = MountTable.for_mounts(str(rootfs), targets)
    mounts_file = directory / "mounts.json"
    table.dump(str(mounts_file), targets)

    command = [*(container.get("command") or []), *(container.get("args") or [])]
    if not container.get("command"):
        raise StartError(
            f"container {container['name']!r} has no command: the node agent cannot run an image's entrypoint"
        )
    expansion = {**service_env, **pod_env}
    argv = [table.translate_arg(expand(token, expansion)) for token in command]

    env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
    env.update(HOSTNAME=pod["spec"].get("hostname") or pod["metadata"]["name"], HOME=str(rootfs))
    env.update(service_env)
    env.update(node.extra_env)
    env.update({key: table.translate_env(value) for key, value in pod_env.items()})
    env["PATH"] = f"{node.bin_dir}:{env.get('PATH') or os.defpath}"
    if node.path_hook:
        env["PYTHONPATH"] = ":".join(filter(None, [str(PATH_HOOK), env.get("PYTHONPATH")]))
    env["NODEAGENT_ROOTFS"] = str(rootfs)
    env["NODEAGENT_MOUNTS"] = str(mounts_file)
    env.setdefault("FINETUNE_TERMINATION_LOG", str(termination_log))

    working_dir = container.get("workingDir")
    cwd = Path(table.translate(working_dir)) if working_dir else rootfs
    try:
        cwd.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"workingDir {working_dir}: {error}") from None
    return Launch(argv, env, cwd, log, termination_log, table)


def _mount_targets(container: dict[str, Any], volume_paths: dict[str, Path], env: dict[str, str]) -> dict[str, str]:
    targets: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        source = volume_paths[mount["name"]]
        sub_path = mount.get("subPath") or expand(mount.get("subPathExpr") or "", env)
        if sub_path:
            if sub_path.startswith("/") or ".." in Path(sub_path).parts:
                raise ConfigError(f"volumeMount {mount['name']}: subPath {sub_path!r} must be relative")
            source = source / sub_path
            if not source.exists():
                source.mkdir(parents=True)
        targets[mount["mountPath"]] = str(source)
    return targets


def _build_rootfs(rootfs: Path, targets: dict[str, str]) -> None:
    """A fresh tree of links: shorter mountPaths first, so a mount inside another lands inside its volume."""
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    for mount_path in sorted(targets, key=lambda path: path.rstrip("/").count("/")):
        link = rootfs / mount_path.strip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        elif link.exists():  # inside the volume of an enclosing mount: its data is not ours to remove
            raise ConfigError(f"cannot mount at {mount_path}: the enclosing volume already has a file there")
        link.symlink_to(targets[mount_path])


def _service_env(api_server: str) -> dict[str, str]:
    """What the kubelet injects for the ``kubernetes`` Service, pointing at the API server this agent uses."""
    url = urlparse(api_server)
    host, port = url.hostname or "127.0.0.1", str(url.port or 443)
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
    }
