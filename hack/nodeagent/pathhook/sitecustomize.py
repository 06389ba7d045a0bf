"""The node agent's path hook: a pod's Python processes see their volumeMounts at their mountPaths.

The agent puts this directory first on PYTHONPATH and names the container's mapping file in
NODEAGENT_MOUNTS; Python imports ``sitecustomize`` at start-up, and this one wraps ``open`` and
the path functions of ``os`` (and so ``os.path``, ``pathlib``, ``shutil``, ``tempfile``) to
translate pod paths as mounttable.MountTable describes. Paths that files or the config carry,
such as the trainer config's ``/var/run/finetune/progress/token``, then resolve without any
change to the program. Code that opens files in C (safetensors, pyarrow) or child processes
that are not Python see the machine's own filesystem. Without NODEAGENT_MOUNTS it does nothing.
"""

import builtins
import functools
import importlib.machinery
import importlib.util
import io
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ONE_PATH = (
    "stat", "lstat", "access", "listdir", "scandir", "mkdir", "rmdir", "remove", "unlink", "chmod", "chown",
    "utime", "readlink", "truncate", "chdir", "open", "statvfs", "mkfifo",
)  # fmt: skip
_TWO_PATHS = ("rename", "replace", "link", "symlink")
_CAPABILITY_SETS = ("supports_dir_fd", "supports_fd", "supports_follow_symlinks", "supports_effective_ids")


def _load_mount_table(path):
    spec = importlib.util.spec_from_file_location("_nodeagent_mounttable", os.path.join(_HERE, "..", "mounttable.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MountTable.load(path)


def _translator(table):
    def translate(path):
        if isinstance(path, str):
            return table.translate(path)
        if isinstance(path, bytes):
            return os.fsencode(table.translate(os.fsdecode(path)))
        if isinstance(path, os.PathLike):
            local = os.fspath(path)
            translated = translate(local)
            return path if translated == local else translated
        return path  # a file descriptor

    return translate


def _install(table):
    translate = _translator(table)

    def one(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if args:
                args = (translate(args[0]), *args[1:])
            for keyword in ("path", "file"):
                if keyword in kwargs:
                    kwargs[keyword] = translate(kwargs[keyword])
            return function(*args, **kwargs)

        return wrapper

    def two(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            args = tuple(translate(arg) if index < 2 else arg for index, arg in enumerate(args))
            for keyword in ("src", "dst"):
                if keyword in kwargs:
                    kwargs[keyword] = translate(kwargs[keyword])
            return function(*args, **kwargs)

        return wrapper

    replaced = {}
    for names, wrap in ((_ONE_PATH, one), (_TWO_PATHS, two)):
        for name in names:
            if hasattr(os, name):
                replaced[getattr(os, name)] = wrapper = wrap(getattr(os, name))
                setattr(os, name, wrapper)
    # shutil and others ask whether os.stat supports dir_fd and the like: the wrappers do what they wrap.
    for set_name in _CAPABILITY_SETS:
        capabilities = getattr(os, set_name, None)
        if isinstance(capabilities, set):
            capabilities.update(wrapper for original, wrapper in replaced.items() if original in capabilities)
    builtins.open = io.open = one(io.open)
    # realpath walks the machine's own links (/var/run -> /run) one component at a time: translate first.
    os.path.realpath = one(os.path.realpath)
    _install_ssl(translate)


def _install_ssl(translate):
    """CA bundles and client certificates are opened in C: in-cluster clients read the mounted ca.crt."""
    import ssl

    load_verify_locations = ssl.SSLContext.load_verify_locations
    load_cert_chain = ssl.SSLContext.load_cert_chain

    @functools.wraps(load_verify_locations)
    def verify_locations(self, cafile=None, capath=None, cadata=None):
        return load_verify_locations(self, translate(cafile), translate(capath), cadata)

    @functools.wraps(load_cert_chain)
    def cert_chain(self, certfile, keyfile=None, password=None):
        return load_cert_chain(self, translate(certfile), translate(keyfile), password)

    ssl.SSLContext.load_verify_locations = verify_locations
    ssl.SSLContext.load_cert_chain = cert_chain


def _chain_to_the_next_sitecustomize():
    """Another sitecustomize later on sys.path (a distribution's) still runs, as it would without us."""
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("NODEAGENT_MOUNTS"):
    _install(_load_mount_table(os.environ["NODEAGENT_MOUNTS"]))
_chain_to_the_next_sitecustomize()
