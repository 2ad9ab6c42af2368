"""google.rpc.Status and RetryInfo: what a gRPC server says about a failure it may recover from.

A collector that sheds load (its memory limiter, a queue that is full) answers
RESOURCE_EXHAUSTED or UNAVAILABLE with a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer; a ``google.rpc.RetryInfo`` among its details
says how long to wait before trying again (OTLP/gRPC spec, "Failures"). The
exporter retries RESOURCE_EXHAUSTED only when it is there and waits at least its
``retry_delay``; the embedded receiver writes it to test that.

The two messages are declared here (their field numbers are google/rpc/status.proto's
and error_details.proto's) in a private descriptor pool: the googleapis protos are not
a dependency, and a private pool cannot clash with them when a user has them installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import DecodeError, Message

#: The trailer holding the serialized google.rpc.Status of a failed call.
STATUS_DETAILS_TRAILER = "grpc-status-details-bin"
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"


_FieldProto = descriptor_pb2.FieldDescriptorProto
#: (message, field, number, type, message type name or "", repeated), as googleapis
#: declares them: google.rpc.Status and google.rpc.RetryInfo.
_FIELDS = (
    ("Status", "code", 1, _FieldProto.TYPE_INT32, "", False),
    ("Status", "message", 2, _FieldProto.TYPE_STRING, "", False),
    ("Status", "details", 3, _FieldProto.TYPE_MESSAGE, ".google.protobuf.Any", True),
    ("RetryInfo", "retry_delay", 1, _FieldProto.TYPE_MESSAGE, ".google.protobuf.Duration", False),
)


def _message_classes() -> tuple[type[Message], type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    for well_known in (any_pb2.DESCRIPTOR, duration_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        well_known.CopyToProto(proto)
        pool.Add(proto)
    rpc = descriptor_pb2.FileDescriptorProto(
        name="grayscope/google_rpc_status.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"],
    )
    messages = {name: rpc.message_type.add(name=name) for name in ("Status", "RetryInfo")}
    for message, name, number, kind, type_name, repeated in _FIELDS:
        field = messages[message].field.add(
            name=name,
            number=number,
            type=kind,
            label=_FieldProto.LABEL_REPEATED if repeated else _FieldProto.LABEL_OPTIONAL,
        )
        if type_name:  # set at all (even empty) only on message fields
            field.type_name = type_name
    pool.Add(rpc)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.RetryInfo")),
    )


Status, RetryInfo = _message_classes()


def retry_delay(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The server's RetryInfo delay in seconds, or None when it sent no RetryInfo.

    A RetryInfo without a delay is 0.0 (retry, at the client's own pace). A status
    that does not parse counts as no RetryInfo.
    """
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_TRAILER or not isinstance(value, bytes):
            continue
        status = Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        for detail in status.details:  # type: ignore[attr-defined]
            if detail.type_url != RETRY_INFO_TYPE_URL:
                continue
            info = RetryInfo()
            try:
                info.ParseFromString(detail.value)
            except DecodeError:
                return None
            delay = info.retry_delay  # type: ignore[attr-defined]
            return max(0.0, delay.seconds + delay.nanos / 1e9)
    return None


def status_with_retry_info(code: int, message: str, delay_seconds: float) -> bytes:
    """A serialized google.rpc.Status of gRPC ``code`` whose details hold a RetryInfo of
    ``delay_seconds``: the ``grpc-status-details-bin`` trailer a shedding server sends."""
    info = RetryInfo()
    info.retry_delay.FromTimedelta(timedelta(seconds=delay_seconds))  # type: ignore[attr-defined]
    status = Status(code=code, message=message)  # type: ignore[call-arg]
    status.details.add(  # type: ignore[attr-defined]
        type_url=RETRY_INFO_TYPE_URL, value=info.SerializeToString()
    )
    return status.SerializeToString()
