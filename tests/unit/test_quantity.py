"""One parser for Kubernetes quantities: every suffix, exact values, positive requests only."""

from __future__ import annotations

from fractions import Fraction

import pytest
from catalog import edited, valid_job
from finetune_core.api import FineTuneJob, format_validation_error
from finetune_core.api.quantity import MAX_QUANTITY, QuantityError, parse_quantity, positive_quantity
from pydantic import ValidationError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Fraction(1)),
        ("32", Fraction(32)),
        ("2.5", Fraction(5, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("+4", Fraction(4)),
        ("-1", Fraction(-1)),
        ("0", Fraction(0)),
        ("1n", Fraction(1, 10**9)),
        ("1u", Fraction(1, 10**6)),
        ("500m", Fraction(1, 2)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("2Ki", Fraction(2048)),
        ("1Mi", Fraction(2**20)),
        ("256Gi", Fraction(256 * 2**30)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e+3", Fraction(1000)),
        ("25e-2", Fraction(1, 4)),
        ("0.1", Fraction(1, 10)),
    ],
)
def test_every_kubernetes_suffix_gives_the_exact_value(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "1.5.5", "1KB", "1ki", "1e", "1e1.5", "e3", "1 Gi", "Gi", "--1", "1m1"])
def test_text_that_is_not_a_quantity_is_refused(text):
    with pytest.raises(QuantityError, match="not a quantity"):
        parse_quantity(text)


def test_an_absurd_exponent_is_refused_without_computing_it():
    with pytest.raises(QuantityError, match="exponent is out of range"):
        parse_quantity("1e999999999")


@pytest.mark.parametrize("text", ["0", "-1", "0m", "-500m", "0e5", "0Ki", "-1Gi"])
def test_zero_and_negative_requests_are_refused(text):
    with pytest.raises(QuantityError, match="must be greater than zero"):
        positive_quantity(text)


def test_a_request_beyond_what_kubernetes_represents_is_refused():
    assert positive_quantity("9223372036854775807") == "9223372036854775807"
    with pytest.raises(QuantityError, match="must be at most"):
        positive_quantity("9223372036854775808")
    with pytest.raises(QuantityError, match="must be at most"):
        positive_quantity("8Ei")
    assert parse_quantity("8Ei") == MAX_QUANTITY + 1


@pytest.mark.parametrize("text", ["1n", "500m", "1k", "2Ki", "1e3", "16Gi"])
def test_small_and_large_positive_requests_are_accepted(text):
    assert positive_quantity(text) == text


@pytest.mark.parametrize("field", ["cpu", "memory", "sharedMemory"])
@pytest.mark.parametrize("text", ["0", "-1", "-2Gi"])
def test_the_api_refuses_a_zero_or_negative_resource_naming_the_field(field, text):
    with pytest.raises(ValidationError) as raised:
        FineTuneJob.model_validate(edited(valid_job(), {f"spec.resources.{field}": text}))
    assert format_validation_error(raised.value) == [f"spec.resources.{field}: must be greater than zero"]


@pytest.mark.parametrize("field", ["cpu", "memory", "sharedMemory"])
def test_the_api_accepts_positive_resources_with_any_suffix(field):
    job = FineTuneJob.model_validate(edited(valid_job(), {f"spec.resources.{field}": "1k"}))
    assert job.spec.resources.model_dump(by_alias=True)[field] == "1k"
