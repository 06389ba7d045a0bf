"""Stand-ins for the Hugging Face Hub on a machine without network: a cache layout and a mirror server.

``populate_hub_cache`` writes the layout huggingface_hub reads in offline mode (HF_HUB_OFFLINE=1):
``models--org--name/{refs/<branch>, snapshots/<commit>/...}``. ``HubMirror`` serves a model
directory over HTTP with the four endpoints ``snapshot_download`` uses (repository info, tree
listing, file metadata and file content), as a mirror in HF_ENDPOINT would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def populate_hub_cache(
    cache: Path, repo_id: str, model_dir: Path, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """Put ``model_dir`` into the Hub cache at ``cache`` as ``repo_id``@``commit``; returns the snapshot."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    return snapshot


class HubMirror:
    """A read-only Hub mirror of one model (or dataset) repository, on a free loopback port."""

    def __init__(
        self,
        repo_id: str,
        model_dir: Path,
        commit: str,
        branches: tuple[str, ...] = ("main",),
        repo_type: str = "model",
    ):
        self.repo_id = repo_id
        self.kind = f"{repo_type}s"  # the Hub's path segment: models, datasets
        self.files = {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
        self.commits = {commit}
        self.branches = dict.fromkeys(branches, commit)
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def resolve(self, revision: str) -> str | None:
        """The commit a branch points at, or the commit itself; None for an unknown revision."""
        return self.branches.get(revision) or (revision if revision in self.commits else None)

    def move(self, branch: str, commit: str) -> None:
        """Point ``branch`` at ``commit`` (the same files: what changes is the commit the Hub answers)."""
        self.commits.add(commit)
        self.branches[branch] = commit

    def __enter__(self) -> HubMirror:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                mirror.requests.append(f"{self.command} {path}")
                info_prefix = f"/api/{mirror.kind}/{mirror.repo_id}/revision/"
                tree_prefix = f"/api/{mirror.kind}/{mirror.repo_id}/tree/"
                repo_path = mirror.repo_id if mirror.kind == "models" else f"{mirror.kind}/{mirror.repo_id}"
                resolve_prefix = f"/{repo_path}/resolve/"
                if path.startswith(info_prefix) and mirror.resolve(path[len(info_prefix) :]):
                    siblings = [{"rfilename": name} for name in mirror.files]
                    commit = mirror.resolve(path[len(info_prefix) :])
                    self._json({"id": mirror.repo_id, "sha": commit, "siblings": siblings}, body)
                elif path.startswith(tree_prefix) and mirror.resolve(path[len(tree_prefix) :]):
                    entries = [
                        {"type": "file", "path": name, "size": p.stat().st_size, "oid": _git_oid(p)}
                        for name, p in mirror.files.items()
                    ]
                    self._json(entries, body)
                elif path.startswith(resolve_prefix):
                    revision, _, name = path[len(resolve_prefix) :].partition("/")
                    if not mirror.resolve(revision) or name not in mirror.files:
                        self._missing()
                        return
                    content = mirror.files[name].read_bytes()
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", mirror.resolve(revision))
                    self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    if body:
                        self.wfile.write(content)
                else:
                    self._missing()

            def _json(self, value, body: bool) -> None:
                content = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def _missing(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def _git_oid(path: Path) -> str:
    content = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
