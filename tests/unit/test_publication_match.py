"""Which existing ModelAdapter counts as a job's own publication: the same job by UID and the same artifact."""

from __future__ import annotations

import copy

import pytest
from catalog import edited, valid_job
from finetune_core.api import FineTuneJob
from finetune_core.api.finetunejob import ArtifactStatus
from finetune_operator.render.modeladapter import is_publication_of, render_model_adapter
from finetune_operator.settings import Settings

JOB = FineTuneJob.model_validate(edited(valid_job("demo"), {"metadata.namespace": "team-a", "metadata.uid": "uid-1"}))
ARTIFACT = ArtifactStatus(uri="s3://outputs/team-a/demo/v1/", digest="sha256:" + "a" * 64, size_bytes=10)


def published() -> dict:
    return render_model_adapter(JOB, ARTIFACT, None, Settings(), [], None)


def test_the_adapter_this_job_publishes_is_its_own():
    assert is_publication_of(published(), JOB, ARTIFACT)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("artifact.uri", "s3://tenant/other/v1/"),
        ("artifact.digest", "sha256:" + "b" * 64),
        ("source.uid", "uid-of-another-job"),
    ],
)
def test_an_adapter_that_differs_in_job_uid_artifact_or_digest_is_not(field, value):
    """A tenant can pre-create ModelAdapter/<job> with the job's UID copied into spec.source: the artifact
    it points serving at must be the job's, or it is someone else's adapter under the job's name."""
    adapter = copy.deepcopy(published())
    section, key = field.split(".")
    adapter["spec"][section][key] = value
    assert not is_publication_of(adapter, JOB, ARTIFACT)


def test_an_adapter_without_a_source_or_artifact_is_not():
    adapter = published()
    del adapter["spec"]["source"]
    assert not is_publication_of(adapter, JOB, ARTIFACT)
    assert not is_publication_of({"metadata": {"name": "demo"}}, JOB, ARTIFACT)
