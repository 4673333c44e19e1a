"""The http channel end to end: real gateways, real Postgres, real litellm against the fake LLM,
and the openai Python client (plus raw aiohttp for what the client hides) as the caller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from pydantic import ValidationError

from adapters.http import HttpChannelConfig
from gateway import ConfigError, Conversation, Envelope, ReplyAddress, Sender
from gateway.config import Config, RouteConfig
from gateway.router import resolve_route
from gateway.runtime import Gateway
from gateway.testing import GatewayHarness, running_gateway, test_config
from tests.fakes import llm as llm_fakes
from tests.fakes.llm import FakeLLM

fake_llm = llm_fakes.fake_llm

KEY = "sk-soulgate-test-key-main-0001"
POET_KEY = "sk-soulgate-test-key-poet-0002"


@pytest_asyncio.fixture(scope="module", autouse=True)
async def _litellm_imported() -> None:
    from agents.llm import load_litellm  # seconds, once, not inside the first test's timeout

    await load_litellm()


def souls(soul_dir: Path) -> Path:
    for name, model, text in (("assistant", "default", "You are a helpful test agent."),
                              ("poet", "verse", "You answer in verse.")):
        soul_dir.mkdir(parents=True, exist_ok=True)
        (soul_dir / f"{name}.md").write_text(
            f"---\nname: {name}\ndescription: the {name}\nmodel: {model}\n---\n{text}\n", encoding="utf-8")
    return soul_dir


def config(fake: FakeLLM, soul_dir: Path, *, http: dict[str, Any] | None = None,
           accounts: dict[str, Any] | None = None, **extra: Any) -> Config:
    llm = {"api_base": fake.api_base, "api_key": "sk-test", "timeout": 5.0}
    data: dict[str, Any] = {
        "agents": {"soul_dir": str(souls(soul_dir))},
        "models": {"default": {"model": "openai/m-default", **llm}, "verse": {"model": "openai/m-verse", **llm}},
        "channels": {"http": accounts or {"main": {"api_keys": [KEY]}}},
        # the route names the assistant for every http request; `model` must still win
        "routes": [{"channel": "http", "agent": "assistant"}],
        "http": {"port": 0, **(http or {})},
        **extra,
    }
    return test_config(data)


@pytest_asyncio.fixture
async def gw(soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    async with running_gateway(soulgate_database_url, config=config(fake_llm, tmp_path)) as h:
        yield h


def base(h: GatewayHarness | Gateway) -> str:
    gateway = h.gateway if isinstance(h, GatewayHarness) else h
    return f"http://127.0.0.1:{gateway.public_port}/v1"


def client(h: GatewayHarness | Gateway, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base(h), api_key=key, max_retries=0, timeout=20)


async def post(h: GatewayHarness, body: Any, *, key: str | None = KEY, path: str = "/chat/completions",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    sent = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.post(base(h) + path, data=data,
                                                    headers={**sent, **(headers or {})}) as r:
        text = await r.text()
        try:
            return r.status, dict(r.headers), json.loads(text)
        except json.JSONDecodeError:
            return r.status, dict(r.headers), text


async def rows(h: GatewayHarness | Gateway, sql: str, *args: Any) -> list[dict[str, Any]]:
    gateway = h.gateway if isinstance(h, GatewayHarness) else h
    return [dict(r) for r in await gateway.store.db.fetch(sql, *args)]


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "poet", "messages": [{"role": "user", "content": text}], **extra}


# -- answering -------------------------------------------------------------------------------


async def test_openai_client_non_streaming_reaches_the_named_agent(gw: GatewayHarness, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("m-verse", "Roses are red")
    done = await client(gw).chat.completions.create(
        model="poet", messages=[{"role": "system", "content": "be terse"}, {"role": "user", "content": "a rhyme"}])
    assert done.choices[0].message.content == "Roses are red" and done.choices[0].finish_reason == "stop"
    assert done.model == "poet" and done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.usage is not None and done.usage.prompt_tokens > 0 and done.usage.completion_tokens == 3
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    [request] = fake_llm.requests_for("m-verse")  # the poet's model, although the route says assistant
    assert request.messages[-1] == {"role": "user", "content": "a rhyme"}
    assert "be terse" not in json.dumps(request.messages)  # the SOUL file is the system prompt
    inbox_id = done.id.removeprefix("chatcmpl-")
    [turn] = await rows(gw, "SELECT status, conversation_key FROM inbox WHERE id = $1::uuid", inbox_id)
    assert turn["status"] == "done" and turn["conversation_key"].startswith("http:main:")
    outbox = await rows(gw, "SELECT status FROM outbox WHERE inbox_id = $1::uuid", inbox_id)
    assert [r["status"] for r in outbox] == ["sent"]
    history = await gw.services.history(turn["conversation_key"])
    assert [(e.role, e.content) for e in history] == [("user", "a rhyme"), ("assistant", "Roses are red")]
    [run] = await rows(gw, "SELECT agent FROM agent_runs WHERE inbox_id = $1::uuid", inbox_id)
    assert run["agent"] == "poet"
    # a slash command is answered like on every channel, and made no LLM call
    status, _headers, body = await post(gw, ask("/help"))
    assert status == 200 and "/help" in body["choices"][0]["message"]["content"]
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def test_openai_client_streaming_and_the_raw_sse(gw: GatewayHarness, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("m-verse", "Violets are blue", "Sugar is sweet")
    stream = await client(gw).chat.completions.create(
        model="poet", messages=[{"role": "user", "content": "more"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Violets are blue"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])

    async with aiohttp.ClientSession() as s, s.post(
        base(gw) + "/chat/completions", json=ask("again", stream=True), headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and raw.endswith("data: [DONE]\n\n")
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" and "usage" not in p for p in payloads)
    assert payloads[1]["choices"][0]["delta"] == {"content": "Sugar is sweet"}


async def test_models_are_the_soul_agents_and_an_account_may_be_limited(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    accounts = {"main": {"api_keys": [KEY]}, "poetry": {"api_keys": [POET_KEY], "agents": ["poet"]}}
    async with running_gateway(soulgate_database_url, config=config(fake_llm, tmp_path, accounts=accounts)) as h:
        listed = await client(h).models.list()
        assert [m.id for m in listed.data] == ["assistant", "poet"]
        assert all(m.object == "model" and m.owned_by == "soulgate" for m in listed.data)
        assert (await client(h).models.retrieve("poet")).id == "poet"
        assert [m.id for m in (await client(h, POET_KEY).models.list()).data] == ["poet"]
        with pytest.raises(openai.NotFoundError):
            await client(h, POET_KEY).models.retrieve("assistant")
        with pytest.raises(openai.NotFoundError) as info:
            await client(h, POET_KEY).chat.completions.create(model="assistant", messages=[
                {"role": "user", "content": "hi"}])
        assert info.value.code == "model_not_found"
        fake_llm.enqueue("m-verse", "for the poetry account")
        done = await client(h, POET_KEY).chat.completions.create(model="poet", messages=[
            {"role": "user", "content": "hi"}])
        [turn] = await rows(h, "SELECT account FROM inbox")
        assert done.choices[0].message.content == "for the poetry account" and turn["account"] == "poetry"


async def test_without_soul_agents_the_default_agent_is_the_only_model(
    soulgate_database_url: str, tmp_path: Path
) -> None:
    cfg = test_config({"agents": {"soul_dir": str(tmp_path / "none")}, "plugins": {"disabled": ["soul_agents"]},
                       "channels": {"http": {"main": {"api_keys": [KEY]}}}})
    async with running_gateway(soulgate_database_url, config=cfg) as h:
        assert [m.id for m in (await client(h).models.list()).data] == ["assistant"]


# -- refusing ----------------------------------------------------------------------------------


async def test_bad_or_missing_key_is_401_in_openai_shape_and_stores_nothing(gw: GatewayHarness) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await client(gw, "sk-soulgate-not-a-known-key").chat.completions.create(
            model="poet", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await client(gw, KEY + "x").models.list()
    for key, headers in ((None, {}), (None, {"Authorization": f"Basic {KEY}"}), (None, {"Authorization": "Bearer "})):
        status, got, body = await post(gw, ask("hi"), key=key, headers=headers)
        assert status == 401 and got["WWW-Authenticate"] == "Bearer"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert await rows(gw, "SELECT id FROM inbox") == []


MALFORMED: list[tuple[Any, str | None, str]] = [
    (b"{not json", None, "parse the JSON body"),
    (b"[1, 2]", None, "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "model"),
    ({"model": "poet"}, "messages", "non-empty list"),
    ({"model": "poet", "messages": []}, "messages", "non-empty list"),
    ({"model": "poet", "messages": ["hi"]}, "messages[0]", "must be an object"),
    ({"model": "poet", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "one of"),
    ({"model": "poet", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "messages[1]", "last message must be a user message"),
    ({"model": "poet", "messages": [{"role": "user", "content": "   "}]}, "messages[0]", "with text"),
    ({"model": "poet", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages[0].content", "only text"),
    (ask("hi", n=2), "n", "n must be 1"),
    (ask("hi", tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "not supported"),
    (ask("hi", stream="yes"), "stream", "true or false"),
    (ask("hi", stream_options={"include_usage": "yes"}), "stream_options", "include_usage"),
    (ask("hi", user=42), "user", "non-empty string"),
    (ask("hi", user="x" * 300), "user", "at most 256"),
]


async def test_malformed_requests_are_400_naming_the_problem_and_store_nothing(gw: GatewayHarness) -> None:
    for body, param, words in MALFORMED:
        status, _headers, got = await post(gw, body)
        assert status == 400, (body, got)
        assert got["error"]["param"] == param and words in got["error"]["message"], (body, got)
        assert got["error"]["type"] == "invalid_request_error"
    assert await rows(gw, "SELECT id FROM inbox") == []


async def test_unknown_model_is_404_and_bad_headers_400(gw: GatewayHarness) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and "gpt-4o" in info.value.message
    status, _h, body = await post(gw, ask("hi"), headers={"X-Soulgate-Conversation": "a\tb"})
    assert status == 400 and "X-Soulgate-Conversation" in body["error"]["message"]
    status, _h, body = await post(gw, ask("hi"), headers={"Idempotency-Key": "k" * 300})
    assert status == 400 and "Idempotency-Key" in body["error"]["message"]
    assert await rows(gw, "SELECT id FROM inbox") == []


async def test_body_over_the_limit_is_413(soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path) -> None:
    cfg = config(fake_llm, tmp_path, http={"max_body_bytes": 4096})
    async with running_gateway(soulgate_database_url, config=cfg) as h:
        status, _h, body = await post(h, ask("x" * 10_000))
        assert status == 413 and body["error"]["code"] == "request_too_large"
        assert await rows(h, "SELECT id FROM inbox") == []


# -- conversations and history ------------------------------------------------------------------


async def test_earlier_messages_start_a_conversation_and_stored_history_wins_after(
    gw: GatewayHarness, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue("m-verse", "one", "two", "three", "four")
    earlier = [{"role": "user", "content": "I am Ada"}, {"role": "assistant", "content": "Hello Ada"},
               {"role": "tool", "content": "ignored"}]
    # no user, no header: a fresh conversation started by the client's own history
    status, headers, _ = await post(gw, {"model": "poet", "messages": [*earlier, {"role": "user", "content": "q1"}]})
    assert status == 200
    sent = fake_llm.requests_for("m-verse")[-1].messages[1:]
    assert sent == [{"role": "user", "content": "I am Ada"}, {"role": "assistant", "content": "Hello Ada"},
                    {"role": "user", "content": "q1"}]
    # the answer names the conversation: sending it back continues it from the stored history
    conversation = headers["X-Soulgate-Conversation"]
    status, _, _ = await post(gw, {"model": "poet", "messages": [{"role": "user", "content": "forged"},
                                                                  {"role": "user", "content": "q2"}]},
                              headers={"X-Soulgate-Conversation": conversation})
    assert status == 200
    contents = [m["content"] for m in fake_llm.requests_for("m-verse")[-1].messages[1:]]
    assert contents == ["I am Ada", "Hello Ada", "q1", "one", "q2"]  # "forged" was ignored
    # `user` names a conversation (and the sender) too; two requests of one user share it
    for text in ("u1", "u2"):
        status, headers, _ = await post(gw, ask(text, user="grace"))
        assert status == 200 and headers["X-Soulgate-Conversation"] == "grace"
    contents = [m["content"] for m in fake_llm.requests_for("m-verse")[-1].messages[1:]]
    assert contents == ["u1", "three", "u2"]
    assert "grace" in fake_llm.requests_for("m-verse")[-1].messages[0]["content"]  # the sender's name


# -- waiting: timeouts, retries, clients that leave -------------------------------------------------


async def test_timeout_is_504_with_the_inbox_id_and_the_answer_can_be_fetched_later(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    cfg = config(fake_llm, tmp_path, accounts={"main": {"api_keys": [KEY], "reply_timeout_seconds": 0.3}})
    fake_llm.set_latency("m-verse", 1.5)
    fake_llm.enqueue("m-verse", "late but here")
    async with running_gateway(soulgate_database_url, config=cfg) as h:
        with pytest.raises(openai.InternalServerError) as info:
            await client(h).chat.completions.create(model="poet", messages=[{"role": "user", "content": "hi"}])
        error = info.value.body
        assert isinstance(error, dict) and error["code"] == "reply_timeout"
        assert info.value.response.headers["x-should-retry"] == "false"  # a retry would start a new turn
        inbox_id = error["inbox_id"]
        assert info.value.status_code == 504 and inbox_id in error["message"]
        url = f"{base(h)}/soulgate/replies/{inbox_id}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s:
            async with s.get(url) as r:
                assert r.status == 202 and (await r.json())["status"] == "pending"
            await h.idle()
            async with s.get(url) as r:
                body = await r.json()
                assert r.status == 200 and body["choices"][0]["message"]["content"] == "late but here"
                assert body["model"] == "poet" and body["usage"]["completion_tokens"] == 3
            async with s.get(f"{base(h)}/soulgate/replies/not-a-uuid") as r:
                assert r.status == 404
        assert len(fake_llm.requests_for("m-verse")) == 1  # the openai client did not retry
        # streamed, the status is on its way before the wait: the timeout comes as an error event
        fake_llm.enqueue("m-verse", "late again")
        stream = await client(h).chat.completions.create(
            model="poet", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError, match=r"did not answer within 0\.3 seconds"):
            async for _chunk in stream:
                pass
        await h.idle()


async def test_idempotency_key_makes_a_retry_wait_for_the_same_turn(gw: GatewayHarness, fake_llm: FakeLLM) -> None:
    fake_llm.set_latency("m-verse", 0.5)
    fake_llm.enqueue("m-verse", "only once")
    headers = {"Idempotency-Key": "req-7"}
    first, second = await asyncio.gather(post(gw, ask("hi"), headers=headers), post(gw, ask("hi"), headers=headers))
    assert first[0] == second[0] == 200
    assert first[2]["id"] == second[2]["id"] and first[2]["choices"][0]["message"]["content"] == "only once"
    status, _, again = await post(gw, ask("hi"), headers=headers)  # long after: the stored answer
    assert status == 200 and again["id"] == first[2]["id"]
    assert len(fake_llm.requests_for("m-verse")) == 1
    assert len(await rows(gw, "SELECT id FROM inbox")) == 1


async def test_a_client_that_leaves_does_not_stop_the_turn(gw: GatewayHarness, fake_llm: FakeLLM) -> None:
    fake_llm.set_latency("m-verse", 0.8)
    fake_llm.enqueue("m-verse", "streamed to nobody", "answered to nobody")
    async with aiohttp.ClientSession() as s:
        r = await s.post(base(gw) + "/chat/completions", json=ask("hi", stream=True),
                         headers={"Authorization": f"Bearer {KEY}"})
        inbox_id = r.headers["X-Soulgate-Inbox-Id"]
        r.close()  # gone after the first event, mid-turn
    while not fake_llm.requests_for("m-verse"):  # noqa: ASYNC110 - the first turn takes the first answer
        await asyncio.sleep(0.02)
    sent = asyncio.create_task(post(gw, ask("hi"), headers={"X-Soulgate-Conversation": "leaver"}))
    while len(fake_llm.requests_for("m-verse")) < 2:  # noqa: ASYNC110 - waiting on the fake's record
        await asyncio.sleep(0.05)
    sent.cancel()
    await gw.idle()
    turns = await rows(gw, "SELECT id::text, status FROM inbox ORDER BY seq")
    assert [t["status"] for t in turns] == ["done", "done"] and turns[0]["id"] == inbox_id
    assert [r["status"] for r in await rows(gw, "SELECT status FROM outbox ORDER BY id")] == ["sent", "sent"]
    history = await gw.services.history("http:main:leaver:")
    assert [(e.role, e.content) for e in history] == [("user", "hi"), ("assistant", "answered to nobody")]


async def test_a_stopping_gateway_answers_waiting_requests_503_and_finishes_the_turn(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    gw = Gateway(config(fake_llm, tmp_path), entry_points=False, database_url=soulgate_database_url)
    await gw.start()
    try:
        fake_llm.set_latency("m-verse", 0.5)
        fake_llm.enqueue("m-verse", "finished during the grace period")
        waiting = asyncio.create_task(client(gw).chat.completions.create(
            model="poet", messages=[{"role": "user", "content": "hi"}]))
        while not fake_llm.requests_for("m-verse"):  # noqa: ASYNC110 - waiting on the fake's record
            await asyncio.sleep(0.02)
        await gw.stop()
        with pytest.raises(openai.InternalServerError) as info:
            await waiting
        assert info.value.status_code == 503 and isinstance(info.value.body, dict)
        assert info.value.body["code"] == "shutting_down" and "inbox_id" in info.value.body
    finally:
        await gw.stop()
    check = Gateway(test_config(), entry_points=False, database_url=soulgate_database_url)
    await check._connect()
    try:
        [turn] = await rows(check, "SELECT status FROM inbox")
        [chunk] = await rows(check, "SELECT body->>'text' AS text FROM outbox")
        assert turn["status"] == "done" and chunk["text"] == "finished during the grace period"
    finally:
        await check.store.db.close()


# -- several instances ---------------------------------------------------------------------------


async def test_request_enters_an_ingress_gateway_and_the_turn_runs_in_a_worker(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    def gateway(role: str) -> Gateway:
        cfg = config(fake_llm, tmp_path, gateway={"instance_name": role, "shutdown_grace_seconds": 2.0})
        return Gateway(cfg, role=role, entry_points=False, database_url=soulgate_database_url)  # type: ignore[arg-type]

    ingress, worker = gateway("ingress"), gateway("worker")
    await ingress.start()
    await worker.start()
    try:
        assert worker.public_port is None  # a worker serves no requests, it runs turns
        fake_llm.enqueue("m-verse", "from the worker", "streamed from the worker")
        done = await client(ingress).chat.completions.create(
            model="poet", messages=[{"role": "user", "content": "who answers?"}])
        assert done.choices[0].message.content == "from the worker"
        assert done.usage is not None and done.usage.completion_tokens == 3
        stream = await client(ingress).chat.completions.create(
            model="poet", messages=[{"role": "user", "content": "and now?"}], stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "streamed from the worker"
        claimed = await rows(ingress, "SELECT claimed_by FROM inbox")
        assert [r["claimed_by"].split("/")[0] for r in claimed] == ["worker", "worker"]
        assert worker.metrics.delivered.labels("http")._value.get() == 2
        assert ingress.metrics.admitted.labels("http")._value.get() == 2
    finally:
        await worker.stop()
        await ingress.stop()


# -- the pieces ------------------------------------------------------------------------------------


def _env(agent: str | None) -> Envelope:
    return Envelope(channel="http", account="main", external_id="e1", conversation=Conversation("c1"),
                    sender=Sender("u1"), text="hi", reply_to=ReplyAddress("http", "main"), agent=agent)


def test_router_takes_the_envelopes_agent_and_keeps_the_routes_other_settings() -> None:
    routes = [RouteConfig(agent="assistant", channel="http", allowed_senders=["u1"], options={"k": 1})]
    named = resolve_route(_env("poet"), routes, "assistant")
    assert named.agent == "poet" and named.allowed_senders == ("u1",) and named.options == {"k": 1}
    assert resolve_route(_env(None), routes, "default").agent == "assistant"
    assert resolve_route(_env("poet"), [], "default").agent == "poet"
    assert resolve_route(_env(None), [], "default").agent == "default"


def test_envelope_agent_round_trips_and_is_absent_from_other_envelopes() -> None:
    assert Envelope.from_json(json.loads(json.dumps(_env("poet").to_json()))).agent == "poet"
    plain = _env(None).to_json()
    assert "agent" not in plain and Envelope.from_json(plain).agent is None


@pytest.mark.parametrize(("table", "problem"), [
    ({}, "api_keys: Field required"),
    ({"api_keys": []}, "api_keys: List should have at least 1 item"),
    ({"api_keys": ["short-key"]}, "key 1 is shorter than 16 characters"),
    ({"api_keys": [KEY, "has a space in it!!"]}, "key 2 contains spaces"),
    ({"api_keys": [KEY, KEY]}, "key 2 is listed twice"),
    ({"api_keys": [KEY], "agents": [""]}, "may not be empty"),
    ({"api_keys": [KEY], "reply_timeout_seconds": 0}, "greater than 0"),
    ({"api_keys": [KEY], "api_key": KEY}, "api_key: unknown key"),
])
def test_bad_account_tables_are_refused_without_echoing_keys(table: dict[str, Any], problem: str) -> None:
    problems = Gateway(test_config({"channels": {"http": {"main": table}}})).load_plugins()
    assert len(problems) == 1 and problems[0].startswith("channels.http.main.") and problem in problems[0], problems
    assert KEY not in problems[0] and "short-key" not in problems[0]
    with pytest.raises(ValidationError):
        HttpChannelConfig.model_validate(table)


async def test_one_key_in_two_accounts_refuses_to_start(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    accounts = {"a": {"api_keys": [KEY]}, "b": {"api_keys": [POET_KEY, KEY]}}
    gw = Gateway(config(fake_llm, tmp_path, accounts=accounts), entry_points=False,
                 database_url=soulgate_database_url)
    try:
        with pytest.raises(ConfigError, match=r"channels\.http\.b: .* a key must pick exactly one account"):
            await gw.start()
    finally:
        await gw.stop()
