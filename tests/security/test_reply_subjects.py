"""A peer cannot use a connector as a relay: answers go only to a registered region's inbox (the
requesting region's own, when the header parses), never to another region's stream subjects."""

from __future__ import annotations

import nats

from tests.conftest import QD, SZ, WX, Stack
from tests.e2e.tamper import craft
from tests.helpers import eventually
from tongban.core import subjects


async def test_reply_to_another_regions_subjects_is_refused(stack: Stack) -> None:
    wx = stack.nodes[WX]
    qd = await stack.nats(QD)
    landed: list[str] = []

    async def sink(msg: nats.aio.msg.Msg) -> None:
        landed.append(msg.subject)

    await qd.subscribe("tb.v1.>", cb=sink)
    await qd.flush()
    sz = await stack.nats(SZ)
    try:
        before = await wx.ledger.size()
        for reply in (
            subjects.request_subject(QD, "SBJFJLCX0001"),  # Qingdao's durable inbound stream
            f"{subjects.inbox_prefix(QD)}.stolen",  # a real inbox, but not the sender's
            "",  # nobody to answer
        ):
            await sz.publish(subjects.rpc_subject(WX, "SBJFJLCX0001"), craft(stack).data, reply=reply)
        # A well-addressed request after them, from the same connection: once it is answered, the
        # three before it have been taken off the subscription (and dropped).
        answer = await sz.request(subjects.rpc_subject(WX, "SBJFJLCX0001"), craft(stack).data, timeout=10)
        assert answer.data
        await eventually(lambda: wx.backend_calls() == 1, what="the well-addressed request served")
        await qd.flush()
    finally:
        await sz.close()
        await qd.close()
    assert wx.backend_calls() == 1  # the three others never reached the back end
    assert await wx.ledger.size() - before == 2  # RECEIVED + PROCESSED of the good one only
    assert landed == []
