"""The adapters' outbound rate-limit buckets against the platforms' windows, with delivery jitter.

The delivery worker reserves every bucket of ``adapter.rate_limits(address)``
(GCRA, storage/ratelimit.py) and sends when the slowest allows it; the send
reaches the platform a little later (event loop, network). Here that is replayed
in plain arithmetic: a burst sent as fast as the buckets allow, each send
arriving up to ``JITTER`` late, checked against the sliding windows the fakes
enforce (tests/fakes: a send is refused when the window already holds the
limit). Each burst must never be refused, and must go at >= 0.9x the documented
rate (the targets of bench/outbound.py, which measures the same over HTTP).
"""

from __future__ import annotations

import bisect
import itertools
import random

import pytest
from pydantic import SecretStr

from adapters.slack import SlackConfig
from adapters.slack.outbound import SlackOutbound
from adapters.teams import TeamsConfig
from adapters.teams.adapter import TEAMS_LIMITS, TeamsAdapter
from adapters.telegram.sending import rate_limits_for
from gateway import RateLimit, ReplyAddress

JITTER = 0.04  # seconds a send may arrive after its slot


def slots(limits: list[RateLimit], count: int) -> list[float]:
    """Send times of ``count`` messages reserved one after another (storage/ratelimit.py's GCRA)."""
    tat: dict[str, float] = {}
    now, out = 0.0, []
    for _ in range(count):
        wait = 0.0
        for lim in limits:
            tat[lim.key] = max(tat.get(lim.key, now), now) + lim.interval
            wait = max(wait, tat[lim.key] - now - lim.interval * max(1, lim.burst))
        now += max(0.0, wait)
        out.append(now)
    return out


def arrivals(times: list[float], pattern: str) -> list[float]:
    if pattern == "on time":
        return times
    if pattern == "alternating":  # every other send late: the next one looks early
        return [t + (JITTER if i % 2 == 0 else 0.0) for i, t in enumerate(times)]
    rng = random.Random(7)
    return sorted(t + rng.uniform(0, JITTER) for t in times)


def refused(times: list[float], limit: int, window: float) -> int:
    """How many sends a sliding window of ``limit`` per ``window`` seconds refuses (refusals not counted)."""
    accepted: list[float] = []  # ascending
    out = 0
    for t in sorted(times):
        if len(accepted) - bisect.bisect_right(accepted, t - window) >= limit:
            out += 1
        else:
            accepted.append(t)
    return out


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


PATTERNS = ["on time", "alternating", "random"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_telegram_one_chat(pattern: str) -> None:
    times = slots(rate_limits_for("1", 1001), 100)
    assert refused(arrivals(times, pattern), 1, 1.0) == 0
    assert rate(times) >= 0.9 * 1.0


@pytest.mark.parametrize("pattern", PATTERNS)
def test_telegram_one_group(pattern: str) -> None:
    times = slots(rate_limits_for("1", -100123), 100)
    arrived = arrivals(times, pattern)
    assert refused(arrived, 1, 1.0) == 0 and refused(arrived, 20, 60.0) == 0
    assert rate(times) >= 0.9 * 20 / 60


@pytest.mark.parametrize("pattern", PATTERNS)
def test_telegram_distinct_chats_share_the_bot_limit(pattern: str) -> None:
    # one message to each of 1000 chats: only the bot bucket is shared
    bot = [lim for lim in rate_limits_for("1", 5) if lim.key.endswith(":bot")]
    times = slots(bot, 1000)
    assert refused(arrivals(times, pattern), 30, 1.0) == 0
    assert rate(times) >= 0.9 * 30


@pytest.mark.parametrize("pattern", PATTERNS)
def test_slack_one_channel(pattern: str) -> None:
    cfg = SlackConfig(bot_token=SecretStr("xoxb-1"), signing_secret=SecretStr("s"))
    limits = SlackOutbound(cfg, api=None).rate_limits(  # type: ignore[arg-type]
        ReplyAddress("slack", "main", {"team": "T1", "channel": "C1"}))
    times = slots(limits, 100)
    arrived = sorted(arrivals(times, pattern))
    # tests/fakes/slack.py: a post less than 1.0 s after the channel's last one is refused
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(arrived))
    assert rate(times) >= 0.9 * 1.0


@pytest.mark.parametrize("pattern", PATTERNS)
def test_teams_one_conversation(pattern: str) -> None:
    adapter = TeamsAdapter("main", TeamsConfig(app_id="a", app_password=SecretStr("p"), tenant_id="t"))
    limits = adapter.rate_limits(ReplyAddress("teams", "main", {"conversation_id": "19:c", "reference": {}}))
    burst, long_run = slots(limits, 100), slots(limits, 2000)
    for times in (burst, long_run):
        arrived = arrivals(times, pattern)
        assert all(refused(arrived, limit, window) == 0 for limit, window in TEAMS_LIMITS)
    assert rate(burst) >= 0.9 * 60 / 30  # a burst: bound by 60 per 30 s
    assert rate(long_run) >= 0.9 * 1800 / 3600  # for an hour: 1800 per hour


def test_the_old_buckets_fail_here() -> None:
    """The replay catches what bench/outbound.py measured before the fix (429s, slow Teams)."""
    old_bot = [RateLimit("bot", 1 / 30, 30)]
    assert refused(slots(old_bot, 200), 30, 1.0) > 0
    old_group = [RateLimit("chat", 1.0, 1), RateLimit("group", 3.0, 3)]
    assert refused(slots(old_group, 100), 20, 60.0) > 0
    assert refused(arrivals(slots([RateLimit("chat", 1.0, 1)], 20), "alternating"), 1, 1.0) > 0
    old_teams = [RateLimit(f"t{w}", w / (n - max(1, n // 4)), max(1, n // 4)) for n, w in TEAMS_LIMITS]
    assert rate(slots(old_teams, 100)) < 0.9 * 2
