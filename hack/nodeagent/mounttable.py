"""A container's view of the filesystem without a mount namespace: which pod paths live where.

Each container gets a directory, its *rootfs*, where every volumeMount appears at its mountPath
as a symbolic link to the volume's local directory (``rootfs/etc/finetune -> volumes/config``).
A pod path is translated to ``rootfs + path`` when it is a mountPath or lies under one, or when
it is a directory above a mountPath that does not exist on this machine (``/var/run/finetune``
above ``/var/run/finetune/credentials/model``, ``/mnt/pvc`` above ``/mnt/pvc/<claim>``); every
other path (``/usr/bin/env``, ``/dev/null``, ``/tmp``) is the machine's own. Paths already local
(under the rootfs or a volume's directory) are left alone, so translating twice is harmless.

This module has no dependencies: the agent uses it to rewrite env values and arguments, and the
path hook (pathhook/sitecustomize.py) loads it by file path inside the pod's Python processes.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterable

MOUNTS_FILE_VERSION = 1
_FLAG_WITH_PATH = re.compile(r"^(--?[A-Za-z0-9][\w.-]*=)(/.*)$", re.DOTALL)


class MountTable:
    def __init__(self, rootfs: str, mount_paths: Iterable[str], virtual_dirs: Iterable[str], local: Iterable[str]):
        self.rootfs = rootfs.rstrip("/")
        self.mount_paths = sorted({posixpath.normpath(path) for path in mount_paths}, key=len, reverse=True)
        self.virtual_dirs = frozenset(virtual_dirs)
        self.local = tuple(sorted({self.rootfs, *(path.rstrip("/") for path in local)}))

    @classmethod
    def for_mounts(cls, rootfs: str, targets: dict[str, str]) -> MountTable:
        """``targets``: mountPath -> the local path behind it. Parent directories missing here become virtual."""
        virtual = set()
        for mount_path in targets:
            parent = posixpath.dirname(posixpath.normpath(mount_path))
            while parent != "/" and not os.path.lexists(parent):
                virtual.add(parent)
                parent = posixpath.dirname(parent)
        return cls(rootfs, targets, virtual, targets.values())

    # -- the mapping file --------------------------------------------------------------------

    def dump(self, path: str, targets: dict[str, str]) -> None:
        document = {
            "version": MOUNTS_FILE_VERSION,
            "rootfs": self.rootfs,
            "mounts": dict(sorted(targets.items())),
            "virtualDirs": sorted(self.virtual_dirs),
            "local": list(self.local),
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)

    @classmethod
    def load(cls, path: str) -> MountTable:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        return cls(document["rootfs"], document["mounts"], document["virtualDirs"], document["local"])

    # -- translation -------------------------------------------------------------------------

    def translate(self, path: str) -> str:
        """The local path for a pod path; anything that is not a pod path comes back unchanged."""
        if not path.startswith("/") or _within(path, self.local):
            return path
        normal = posixpath.normpath(path)
        if normal == "/":
            return path
        if _within(normal, self.mount_paths) or normal in self.virtual_dirs:
            return self.rootfs + normal + ("/" if path.endswith("/") else "")
        return path

    def translate_arg(self, token: str) -> str:
        """A command-line token: ``/etc/finetune/config.json`` or ``--config=/etc/finetune/config.json``."""
        if flag := _FLAG_WITH_PATH.match(token):
            return flag.group(1) + self.translate(flag.group(2))
        return self.translate(token)

    def translate_env(self, value: str) -> str:
        """An env value: one path, or a colon-separated list of absolute paths (PYTHONPATH, PATH)."""
        parts = value.split(":")
        if len(parts) > 1 and all(part.startswith("/") for part in parts):
            return ":".join(self.translate(part) for part in parts)
        return self.translate(value)


def _within(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)
