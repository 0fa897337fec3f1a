"""The one place where tongban errors become gRPC statuses with rich details: for the gateway, the
shared gRPC edge of tongban/runtime/grpc_edge.py (the connector's back-end API answers with it too).
"""

from __future__ import annotations

from tongban.runtime.grpc_edge import DOMAIN, code_of, internal_status, to_status

__all__ = ["DOMAIN", "code_of", "internal_status", "to_status"]
