"""``tongban.v1.CatalogueService``: partners list, read and search the catalogue a gateway holds.

It answers from the gateway's live catalogue (the revision it adopted last) and the live trust
registry (which regions provide an item). Partner authentication, limits and error mapping are the
interceptor's, as for every tongban RPC; the handlers raise domain errors.

Page tokens are opaque to the partner: ``base64url("<revision>.<offset>.<mac>")``, the MAC a keyed
digest (the region's correlation key, so every gateway replica of the region accepts the others'
tokens) over the revision, the offset and the filters. A token that does not decode, was made for
other filters, or was forged is INVALID_ARGUMENT naming ``page_token``; so is one whose revision
the gateway no longer holds (the listing changed too much: start again). Later pages of a listing
come from the revision its first page did, while the gateway holds it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterator

import grpc

from tongban.core.catalogue import Catalogue, CatalogueItem
from tongban.core.catalogue_search import CatalogueIndex
from tongban.core.errors import InvalidRequest, NotFound, Violation
from tongban.core.privacy import Correlator
from tongban.core.registry import Registry
from tongban.v1 import catalogue_pb2, catalogue_pb2_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
DEFAULT_HITS = 20
MAX_HITS = 100
MAX_QUERY_LENGTH = 64
"""Characters of a search query (the proto says so)."""
MAX_FILTER_LENGTH = 128
"""Characters of a department or category filter."""
MAX_TOKEN_LENGTH = 256
_CODE = re.compile(r"[0-9A-Z]{10,36}")
_REGION = re.compile(r"[0-9]{6}")
_TOKEN = re.compile(r"(?P<revision>[0-9]{1,20})\.(?P<offset>[0-9]{1,9})\.(?P<mac>[0-9a-f]{32})")
_LABEL = "catalogue-page-token"


def _bad(path: str, description: str) -> InvalidRequest:
    return InvalidRequest(description, violations=[Violation(path, description)])


class CatalogueService(catalogue_pb2_grpc.CatalogueServiceServicer):
    """The CatalogueService of one gateway.

    Args:
        catalogue: the gateway's live catalogue.
        registry: the gateway's live trust registry (who provides what).
        correlator: the region's keyed digest (page tokens).
    """

    def __init__(self, catalogue: Catalogue, registry: Registry, correlator: Correlator) -> None:
        self.catalogue = catalogue
        self.registry = registry
        self._correlator = correlator
        self._index: CatalogueIndex | None = None
        self._indexed: object = None

    async def ListServices(
        self, request: catalogue_pb2.ListServicesRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.ListServicesResponse:
        return self.list_services(request)

    async def GetService(
        self, request: catalogue_pb2.GetServiceRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.GetServiceResponse:
        return self.get_service(request.code)

    async def SearchServices(
        self, request: catalogue_pb2.SearchServicesRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.SearchServicesResponse:
        return self.search(request.query, request.page_size)

    # -- the logic, without gRPC ---------------------------------------------------------------------

    def list_services(self, request: catalogue_pb2.ListServicesRequest) -> catalogue_pb2.ListServicesResponse:
        """One page of the items matching ``request``'s filters, in catalogue order.

        Raises:
            InvalidRequest: a filter too long or malformed, or a bad page token.
        """
        filters = self._filters(request)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        catalogue, offset = self.catalogue, 0
        if request.page_token:
            revision, offset = self._read_token(request.page_token, filters)
            held = self.catalogue.at(revision)
            if held is None:
                raise _bad("page_token", "The catalogue changed since this listing began: start again.")
            catalogue = held
        matching = list(self._matching(catalogue, request))
        if offset > len(matching):
            raise _bad("page_token", "The page token is past the end of this listing.")
        page = matching[offset : offset + size]
        end = offset + len(page)
        return catalogue_pb2.ListServicesResponse(
            items=page,
            next_page_token=self._token(catalogue.revision, end, filters) if end < len(matching) else "",
            total_size=len(matching),
            catalogue_version=catalogue.version,
            catalogue_revision=catalogue.revision,
        )

    def get_service(self, code: str) -> catalogue_pb2.GetServiceResponse:
        """One item with its whole schema, and the regions that provide it.

        Raises:
            InvalidRequest: ``code`` is not an item code.
            NotFound: the catalogue has no such item.
        """
        if not _CODE.fullmatch(code):
            raise _bad("code", "An item code is 10 to 36 characters of 0-9 and A-Z.")
        catalogue = self.catalogue
        item = catalogue.get(code)
        if item is None:
            raise NotFound(f"the catalogue has no item {code}")
        return catalogue_pb2.GetServiceResponse(
            item=item,
            provider_regions=self._providers(code),
            catalogue_version=catalogue.version,
            catalogue_revision=catalogue.revision,
        )

    def search(self, query: str, page_size: int = 0) -> catalogue_pb2.SearchServicesResponse:
        """The items matching ``query``, best first.

        Raises:
            InvalidRequest: the query is empty or longer than :data:`MAX_QUERY_LENGTH`.
        """
        if len(query) > MAX_QUERY_LENGTH:
            raise _bad("query", f"A query is at most {MAX_QUERY_LENGTH} characters.")
        if not query.strip():
            raise _bad("query", "Give at least one keyword.")
        catalogue = self.catalogue
        limit = min(page_size or DEFAULT_HITS, MAX_HITS)
        hits = self._index_of(catalogue).search(query, limit=limit)
        return catalogue_pb2.SearchServicesResponse(
            hits=[catalogue_pb2.SearchHit(item=h.item, score=h.score) for h in hits],
            catalogue_version=catalogue.version,
            catalogue_revision=catalogue.revision,
        )

    # -- helpers ---------------------------------------------------------------------------------------

    def _index_of(self, catalogue: Catalogue) -> CatalogueIndex:
        """The search index of the catalogue's current items (rebuilt after an adoption)."""
        if self._index is None or self._indexed is not catalogue.items:
            self._index, self._indexed = CatalogueIndex(catalogue), catalogue.items
        return self._index

    def _providers(self, code: str) -> list[str]:
        return sorted(r.code for r in self.registry.regions.values() if code in r.provided_services)

    @staticmethod
    def _filters(request: catalogue_pb2.ListServicesRequest) -> str:
        """The filters as one string (bound into page tokens); checks their shape."""
        for path, value in (("department", request.department), ("category", request.category)):
            if len(value) > MAX_FILTER_LENGTH:
                raise _bad(path, f"At most {MAX_FILTER_LENGTH} characters.")
        if request.provider_region and not _REGION.fullmatch(request.provider_region):
            raise _bad("provider_region", "A region is a 6-digit GB/T 2260 code.")
        return "\x1f".join(
            (
                str(request.handling_mode),
                request.department,
                request.provider_region,
                str(request.share_attribute),
                request.category,
            )
        )

    def _matching(
        self, catalogue: Catalogue, request: catalogue_pb2.ListServicesRequest
    ) -> Iterator[CatalogueItem]:
        provided: frozenset[str] | None = None
        if request.provider_region:
            region = self.registry.region(request.provider_region)
            provided = frozenset(region.provided_services) if region is not None else frozenset()
        for item in catalogue:
            if (
                (not request.handling_mode or item.handling_mode == request.handling_mode)
                and (not request.department or item.provider_department == request.department)
                and (not request.share_attribute or item.share_attribute == request.share_attribute)
                and (not request.category or item.category == request.category)
                and (provided is None or item.code in provided)
            ):
                yield item

    def _mac(self, revision: int, offset: int, filters: str) -> str:
        return self._correlator.digest(f"{revision}.{offset}\x1e{filters}", label=_LABEL)

    def _token(self, revision: int, offset: int, filters: str) -> str:
        text = f"{revision}.{offset}.{self._mac(revision, offset, filters)}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def _read_token(self, token: str, filters: str) -> tuple[int, int]:
        """(revision, offset) of a token this region made for these filters."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise _bad("page_token", "Not a page token of this listing.")
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raise _bad("page_token", "Not a page token of this listing.") from None
        m = _TOKEN.fullmatch(text)
        if m is None:
            raise _bad("page_token", "Not a page token of this listing.")
        revision, offset = int(m["revision"]), int(m["offset"])
        if not hmac.compare_digest(m["mac"], self._mac(revision, offset, filters)):
            raise _bad("page_token", "Not a page token of this listing (made for other filters, or forged).")
        return revision, offset
