"""The files location in S3: the admin's bucket and prefix, reached with the API's own keys (a mounted Secret),
one namespace's prefix at a time. Listing is bounded: a namespace holds at most MAX_FILES files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from finetune_core.endpoints import normalise_endpoint
from finetune_core.s3 import S3_KEYS
from finetune_core.uri import parse_uri

from ..storage import s3_client
from .files import StoredFile, file_key, namespace_prefix, parse_key

MAX_FILES = 10_000
CHUNK = 1 << 20


class StoreFailed(RuntimeError):
    """The store did not do what was asked; the message names the action only."""


def read_credentials(directory: Path) -> dict[str, str]:
    """The keys of the mounted Secret (one file per key)."""
    return {key: (directory / key).read_text().strip() for key in S3_KEYS if (directory / key).is_file()}


class FileStore:
    def __init__(self, uri: str, credentials: dict[str, str]):
        parsed = parse_uri(uri)
        self.bucket = parsed.authority
        self.prefix = parsed.prefix
        endpoint = credentials.get("AWS_ENDPOINT_URL")
        # The endpoint is the admin's (the API's own Secret), so it is the one allowed.
        allowed = frozenset([normalise_endpoint(endpoint)]) if endpoint else frozenset()
        self.client = s3_client(credentials, allowed)

    def uri_of(self, stored: StoredFile) -> str:
        return f"s3://{self.bucket}/{stored.key}"

    def _fail(self, action: str, error: Exception) -> StoreFailed:
        return StoreFailed(f"{action} failed ({type(error).__name__})")

    def put(self, namespace: str, file_id: str, kind: str, filename: str, path: Path) -> StoredFile:
        from botocore.exceptions import BotoCoreError, ClientError

        key = file_key(self.prefix, namespace, file_id, kind, filename)
        try:
            with path.open("rb") as body:  # one PUT, streamed from the checked file (S3 takes up to 5 GiB so)
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except (BotoCoreError, ClientError) as error:
            raise self._fail("storing the file", error) from None
        found = self.find(namespace, file_id)
        if found is None:
            raise StoreFailed("the stored file cannot be listed")
        return found

    def _list(self, prefix: str) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        token = None
        seen = 0
        while seen < MAX_FILES:
            arguments = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                arguments["ContinuationToken"] = token
            try:
                page = self.client.list_objects_v2(**arguments)
            except (BotoCoreError, ClientError) as error:
                raise self._fail("listing files", error) from None
            for item in page.get("Contents", []):
                seen += 1
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def list(self, namespace: str) -> list[StoredFile]:
        """The namespace's files, newest first."""
        found = [
            parse_key(self.prefix, namespace, item["Key"], item["Size"], item["LastModified"])
            for item in self._list(namespace_prefix(self.prefix, namespace))
        ]
        return sorted((f for f in found if f is not None), key=lambda f: (f.created_at, f.id), reverse=True)

    def find(self, namespace: str, file_id: str) -> StoredFile | None:
        for item in self._list(f"{namespace_prefix(self.prefix, namespace)}{file_id}/"):
            stored = parse_key(self.prefix, namespace, item["Key"], item["Size"], item["LastModified"])
            if stored is not None and stored.id == file_id:
                return stored
        return None

    def chunks(self, stored: StoredFile) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=stored.key)["Body"]
        except (BotoCoreError, ClientError) as error:
            raise self._fail("reading the file", error) from None
        with body:
            while chunk := body.read(CHUNK):
                yield chunk

    def delete(self, stored: StoredFile) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=stored.key)
        except (BotoCoreError, ClientError) as error:
            raise self._fail("deleting the file", error) from None
