"""A real S3-compatible server for tests and the demo: MinIO, built from Go modules, on loopback."""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import ClusterError, LocalCluster, build_binaries, free_port

ACCESS_KEY = "finetune-test"
SECRET_KEY = "finetune-test-secret"
REGION = "us-east-1"


@dataclass
class MinioServer:
    data_dir: Path | None = None
    port: int = 0
    processes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._own_dir = self.data_dir is None
        self.data_dir = Path(self.data_dir or tempfile.mkdtemp(prefix="fto-minio-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        """The keys of a Secret the operator and the trainer read S3 credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
        }

    def start(self) -> MinioServer:
        binary = build_binaries("minio")["minio"] / "minio"
        # LocalCluster's spawn gives the same guarantees: own process group, dies with its parent, logged.
        self._runner = LocalCluster(workdir=self.data_dir)
        process = self._runner.spawn(
            "minio",
            [str(binary), "server", str(self.data_dir / "data"), "--address", f"127.0.0.1:{self.port}", "--quiet"],
            env={"MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY, "MINIO_BROWSER": "off"},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/minio/health/live", timeout=1)
                return self
            except OSError:
                if process.popen.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ClusterError(f"MinIO did not start:\n{process.tail()}") from None
                time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if getattr(self, "_runner", None) is not None:
            for process in self._runner.processes:
                process.stop()
            self._runner.processes.clear()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> MinioServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
