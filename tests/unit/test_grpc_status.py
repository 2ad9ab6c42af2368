"""google.rpc.Status and RetryInfo in the grpc-status-details-bin trailer
(pipeline.sinks.otlp.grpc_status)."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sinks.otlp.grpc_status import (
    RETRY_INFO_TYPE_URL,
    STATUS_DETAILS_TRAILER,
    RetryInfo,
    Status,
    retry_delay,
    status_with_retry_info,
)

CODE = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@given(st.floats(0, 86_400), st.text(max_size=200))
def test_the_delay_written_is_the_delay_read(seconds: float, message: str) -> None:
    trailer = status_with_retry_info(CODE, message, seconds)
    read = retry_delay([("x-other", "v"), (STATUS_DETAILS_TRAILER, trailer)])
    assert read == pytest.approx(seconds, abs=1e-6)


def test_the_status_is_what_googleapis_declares() -> None:
    # Field numbers of google/rpc/status.proto and error_details.proto, checked on the
    # wire: Status.code = 1 (varint 8), message = 2, details = 3; RetryInfo.retry_delay = 1.
    trailer = status_with_retry_info(CODE, "m", 2)
    assert trailer.startswith(b"\x08\x08\x12\x01m\x1a")
    status = Status.FromString(trailer)
    (detail,) = status.details  # type: ignore[attr-defined]
    assert detail.type_url == RETRY_INFO_TYPE_URL
    assert RetryInfo.FromString(detail.value).retry_delay.seconds == 2  # type: ignore[attr-defined]
    assert detail.value == b"\n\x02\x08\x02"


def test_no_retry_info_is_no_delay() -> None:
    assert retry_delay(None) is None
    assert retry_delay([("x-other", "v")]) is None
    assert retry_delay([(STATUS_DETAILS_TRAILER, "text, not bytes")]) is None
    plain = Status(code=CODE, message="too large")  # type: ignore[call-arg]
    assert retry_delay([(STATUS_DETAILS_TRAILER, plain.SerializeToString())]) is None
    other = Status(code=CODE)  # type: ignore[call-arg]
    other.details.add(type_url="type.googleapis.com/google.rpc.DebugInfo", value=b"")  # type: ignore[attr-defined]
    assert retry_delay([(STATUS_DETAILS_TRAILER, other.SerializeToString())]) is None


def test_a_retry_info_without_a_delay_is_zero() -> None:
    status = Status(code=CODE)  # type: ignore[call-arg]
    status.details.add(type_url=RETRY_INFO_TYPE_URL, value=b"")  # type: ignore[attr-defined]
    assert retry_delay([(STATUS_DETAILS_TRAILER, status.SerializeToString())]) == 0.0


@given(st.binary(max_size=64))
def test_garbage_never_raises(trailer: bytes) -> None:
    delay = retry_delay([(STATUS_DETAILS_TRAILER, trailer)])
    assert delay is None or delay >= 0.0
