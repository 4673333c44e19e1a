"""The Slack adapter keeps one HTTP connection for its Web API calls.

Without a session of its own, slack-sdk opens a new ``aiohttp.ClientSession``
(a new TCP connection; against slack.com a TLS handshake too) per call. The
fake Slack notes each request's client address, so distinct ports = distinct
connections. Real slack-sdk, real aiohttp, real gateway and Postgres.
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.slack import SlackAdapter, SlackConfig
from gateway import OutcomeUnknown, Reply, ReplyAddress
from gateway.runtime import Gateway
from gateway.testing import test_config
from gateway.testing.recorder import RecordingResponder
from tests.fakes import slack as slack_fakes
from tests.fakes.slack import FakeSlack

fake_slack = slack_fakes.fake_slack

DM = ReplyAddress(channel="slack", account="main", data={"channel": "D0DM"})


def account(fake: FakeSlack) -> dict[str, object]:
    return {"bot_token": fake.workspace.token, "signing_secret": fake.signing_secret,
            "api_base_url": fake.base_url}


def adapter(fake: FakeSlack) -> SlackAdapter:
    return SlackAdapter("main", SlackConfig.model_validate(account(fake)))


async def test_sends_without_start_share_one_connection(fake_slack: FakeSlack) -> None:
    # A worker-role gateway never starts its adapters: the session opens at the first send.
    slack = adapter(fake_slack)
    try:
        for i in range(4):
            await slack.send(DM, Reply(text=f"part {i}"))
        await slack.typing(ReplyAddress(channel="slack", account="main", data={"channel": "D0DM", "ts": "1.2"}))
    finally:
        await slack.close()
    assert [p.text for p in fake_slack.posts] == [f"part {i}" for i in range(4)]
    assert fake_slack.connections("chat.postMessage") == 1
    assert fake_slack.connections() == 1  # reactions.add went over it too
    assert slack.api.sessions_opened == 1


async def test_close_is_idempotent_and_a_later_send_reopens(fake_slack: FakeSlack) -> None:
    slack = adapter(fake_slack)
    await slack.close()  # never used: nothing to close
    await slack.send(DM, Reply(text="one"))
    await slack.close()
    await slack.close()
    await slack.send(DM, Reply(text="two"))  # e.g. a test reusing the adapter: works, fresh session
    await slack.close()
    assert [p.text for p in fake_slack.posts] == ["one", "two"]
    assert fake_slack.connections("chat.postMessage") == 2
    assert slack.api.sessions_opened == 2


async def test_a_dropped_connection_is_not_reposted_and_the_session_carries_on(fake_slack: FakeSlack) -> None:
    slack = adapter(fake_slack)
    try:
        await slack.send(DM, Reply(text="first"))
        # Slack applies the post, then the (reused, kept-alive) connection drops before the answer.
        fake_slack.drop_connection("chat.postMessage", after_processing=True)
        with pytest.raises(OutcomeUnknown):
            await slack.send(DM, Reply(text="second"))
        await slack.send(DM, Reply(text="third"))
    finally:
        await slack.close()
    assert [p.text for p in fake_slack.posts] == ["first", "second", "third"]  # nothing twice
    assert fake_slack.count("chat.postMessage") == 3  # the SDK did not retry the dropped one
    # the dropped connection is discarded from the pool, a new one carries on; the session stays
    assert fake_slack.connections("chat.postMessage") == 2
    assert slack.api.sessions_opened == 1


async def test_worker_gateway_delivers_over_one_connection_and_closes_it(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    # one post at a time (the per-channel interval), so one kept-alive connection can carry them all
    config = test_config({"channels": {"slack": {"main": {**account(fake_slack), "post_interval_seconds": 0.1}}}})
    gw = Gateway(config, role="worker", extra_plugins=[("recorder", RecordingResponder().plugin())],
                 entry_points=False, database_url=soulgate_database_url)
    await gw.start()
    try:
        slack = gw.adapters[("slack", "main")]
        assert isinstance(slack, SlackAdapter) and slack not in gw._started_adapters
        for i in range(3):
            await gw.send_proactive(DM, f"notice {i}")
        await fake_slack.wait_for_posts("D0DM", count=3)
        session = slack.api._session
        assert session is not None and not session.closed
    finally:
        await asyncio.shield(gw.stop())
    assert sorted(p.text for p in fake_slack.posts) == [f"notice {i}" for i in range(3)]
    assert fake_slack.connections("chat.postMessage") == 1
    assert session.closed  # the gateway closed it at shutdown although it never started the adapter
