"""The app's flow control keeps what a running flow queued for the streams (agents/app.py).

Faust's recovery after a rebalance resumes the flow, seeks the input partitions to
their committed offsets while it runs, then resumes it again: the stock resume cleared
the stream queues there, dropping messages the consumer had already counted as read
(the stream mode lost or skipped a partition's first messages across a rebalance).
Real Faust objects: the app the worker builds and a queue made the way Faust makes its
channels' and streams' queues.
"""

from __future__ import annotations

import faust

from agents.app import ResumeKeepsQueued, create_app
from pipeline.config import load_settings


def stream_app() -> faust.App:
    return create_app(load_settings(consumer_mode="stream", geoip_city_db="", es_url=""))


async def test_a_resume_of_the_running_flow_keeps_what_the_fetcher_queued() -> None:
    app = stream_app()
    flow = app.flow_control
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)

    # Revocation: the flow is suspended; what the streams had queued is stale.
    flow.suspend()
    queue.put_nowait("fetched before the revocation")
    # Recovery resumes the flow to read the changelogs: the stale message goes.
    flow.resume()
    assert queue.qsize() == 0
    assert flow.is_active()

    # The input partitions are resumed and sought while the flow runs; the fetcher
    # already queues their first message (the consumer's read offset passes it) ...
    queue.put_nowait("the partition's first message after the seek")
    # ... and recovery resumes the flow once more: the message must stay queued, or
    # it is never handed to the agent nor fetched again.
    flow.resume()
    assert queue.get_nowait() == "the partition's first message after the seek"


async def test_a_resume_after_a_suspension_still_drops_the_stale_messages() -> None:
    app = stream_app()
    flow = app.flow_control
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    flow.resume()
    queue.put_nowait("queued before the next revocation")

    flow.suspend()
    assert not flow.is_active()
    flow.resume()

    assert queue.qsize() == 0
    assert flow.is_active()


def test_both_consumer_modes_use_it() -> None:
    for mode in ("stream", "batch"):
        app = create_app(load_settings(consumer_mode=mode, geoip_city_db="", es_url=""))
        assert isinstance(app.flow_control, ResumeKeepsQueued)
        assert app.flow_control is app.flow_control
