"""The namespace a caller asks for, and the API's settings."""

from __future__ import annotations

import pytest
from finetune_operator.openai_api.access import Caller
from finetune_operator.openai_api.errors import ApiError
from finetune_operator.openai_api.settings import parse


def caller(username: str) -> Caller:
    return Caller("token", {"username": username, "groups": ["system:authenticated"]})


def test_the_project_header_names_the_namespace():
    assert caller("alice@example.com").namespace("team-a") == "team-a"


def test_without_a_project_a_service_account_works_in_its_own_namespace():
    assert caller("system:serviceaccount:team-b:app").namespace(None) == "team-b"


def test_without_a_project_a_person_must_name_one():
    with pytest.raises(ApiError) as caught:
        caller("alice@example.com").namespace(None)
    assert (caught.value.status, caught.value.param) == (400, "project")


@pytest.mark.parametrize("project", ["Team-A", "a/../b", "x" * 64, ""])
def test_a_project_that_is_no_namespace_name_is_refused(project):
    with pytest.raises(ApiError):
        caller("alice").namespace(project)


REQUIRED = {
    "FINETUNE_OPENAI_TLS_CERT_FILE": "/tls/tls.crt",
    "FINETUNE_OPENAI_TLS_KEY_FILE": "/tls/tls.key",
    "FINETUNE_OPENAI_FILES_URI": "s3://files/uploads/",
    "FINETUNE_OPENAI_FILES_CREDENTIALS_DIR": "/keys",
}


def test_settings_come_from_the_environment_and_flags_win():
    settings = parse(["--port=9443"], environ={**REQUIRED, "FINETUNE_OPENAI_PORT": "8443"})
    assert settings.port == 9443 and settings.files_uri == "s3://files/uploads/"
    assert settings.max_upload_bytes == 512 << 20


def test_a_wrong_setting_stops_the_server_naming_it(capsys):
    with pytest.raises(SystemExit):
        parse([], environ={**REQUIRED, "FINETUNE_OPENAI_FILES_URI": "http://files"})
    assert "--files-uri / FINETUNE_OPENAI_FILES_URI" in capsys.readouterr().err


def test_the_job_template_is_a_finetunejob_template_given_as_json(capsys):
    template = '{"nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}'
    settings = parse([f"--job-template={template}"], environ=REQUIRED)
    assert settings.template_spec() == {
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
    }
    with pytest.raises(SystemExit):
        parse(['--job-template={"nodeSelectr": {}}'], environ=REQUIRED)
    assert "--job-template" in capsys.readouterr().err
