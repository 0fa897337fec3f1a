"""Reading google.rpc.Status details off a failed grpc.aio call."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass
class Details:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: dict[str, str] = field(default_factory=dict)
    retry: bool = False


def details_of(err: grpc.aio.AioRpcError) -> Details:
    out = Details(err.code(), err.details() or "")
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == err.code().value[0]
        for any_ in status.details:
            if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_.Unpack(info)
                out.reason = info.reason
            elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                any_.Unpack(br)
                out.violations = {v.field: v.description for v in br.field_violations}
            elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                out.retry = True
    return out
