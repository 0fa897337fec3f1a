"""The gRPC binding of ``tongban.v1.Exchange``: Query to :class:`~gateway.exchange.ExchangeCore`,
Submit, GetCase and WatchCase to :class:`~gateway.case_desk.CaseDesk`.

Deadline handling only: errors are mapped to statuses in the interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.case_desk import CaseDesk
from gateway.exchange import ExchangeCore
from tongban.v1 import exchange_pb2, exchange_pb2_grpc


class ExchangeService(exchange_pb2_grpc.ExchangeServicer):
    """The Exchange servicer of one gateway: a Query's timeout is the caller's deadline, capped by
    ``[gateway] max_deadline_s`` (``default_deadline_s`` without one)."""

    def __init__(self, core: ExchangeCore, desk: CaseDesk) -> None:
        self.core = core
        self.desk = desk

    async def Submit(
        self, request: exchange_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.SubmitResponse:
        return await self.desk.submit(request)

    async def GetCase(
        self, request: exchange_pb2.GetCaseRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.GetCaseResponse:
        return exchange_pb2.GetCaseResponse(case=await self.desk.get_case(request.case_no))

    async def WatchCase(  # type: ignore[override]
        self, request: exchange_pb2.WatchCaseRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[exchange_pb2.WatchCaseResponse]:
        async for event in self.desk.watch_case(request.case_no, request.after_sequence):
            yield exchange_pb2.WatchCaseResponse(event=event)

    async def Query(
        self, request: exchange_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.QueryResponse:
        gw = self.core.cfg.gateway
        remaining = context.time_remaining()
        timeout = gw.default_deadline_s if remaining is None else min(remaining, gw.max_deadline_s)
        return await self.core.query(request.request, timeout_s=timeout)
