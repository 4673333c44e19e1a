"""agents.llm through litellm itself against the fake server: fallbacks, errors, accounting."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agents.llm import FAST_PATH_ENV, LLM, LLMUnavailable, load_litellm, runs_from_attempts
from gateway.config import ModelConfig
from storage import RUN_FIELDS
from tests.fakes.llm import FakeLLM, Fault, ToolCall, ToolCalls

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "hi"}]


def _models(fake: FakeLLM, **overrides: Any) -> dict[str, ModelConfig]:
    out = {}
    for alias in ("primary", "backup"):
        raw = {"model": f"openai/m-{alias}", "api_base": fake.api_base, "api_key": "sk-test", "timeout": 1.0,
               **overrides.get(alias, {})}
        out[alias] = ModelConfig.model_validate(raw)
    return out


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault.rate_limit(retry_after=0), "rate_limited"),
    (Fault.server_error(), "server_error"),
    (Fault.unavailable(), "server_error"),
    (Fault.hang(5), "timeout"),
    (Fault.disconnect(), "connection_error"),
])
async def test_retryable_failures_fall_back(fake_llm: FakeLLM, fault: Fault, reason: str) -> None:
    llm = LLM(_models(fake_llm))
    fake_llm.enqueue("m-primary", fault)
    fake_llm.enqueue("m-backup", "from backup")
    try:
        done = await llm.complete(["primary", "backup"], MESSAGES)
    finally:
        llm.close()
    assert (done.content, done.model) == ("from backup", "backup")
    failed, ok = done.attempts
    assert (failed.model, failed.ok, failed.reason) == ("primary", False, reason)
    assert ok.ok and ok.input_tokens and ok.output_tokens == 2
    assert len(fake_llm.requests_for("m-primary")) == 1


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault.auth_error(), "auth_error"),
    (Fault.bad_request(), "bad_request"),
    (Fault.context_window(), "context_window"),
])
async def test_errors_another_try_cannot_fix_stop_the_chain(fake_llm: FakeLLM, fault: Fault, reason: str) -> None:
    llm = LLM(_models(fake_llm, primary={"max_retries": 2}))
    fake_llm.fail("m-primary", fault)
    with pytest.raises(LLMUnavailable) as info:
        await llm.complete(["primary", "backup"], MESSAGES)
    llm.close()
    assert [(a.model, a.reason) for a in info.value.attempts] == [("primary", reason)]
    assert not info.value.retryable
    assert len(fake_llm.requests_for("m-primary")) == 1  # no retry loop, even with max_retries
    assert fake_llm.requests_for("m-backup") == []


async def test_retries_within_a_model_honour_max_retries(fake_llm: FakeLLM) -> None:
    llm = LLM(_models(fake_llm, primary={"max_retries": 1}))
    fake_llm.enqueue("m-primary", Fault.rate_limit(retry_after=0), "second try")
    done = await llm.complete(["primary", "backup"], MESSAGES)
    llm.close()
    assert done.content == "second try" and [a.ok for a in done.attempts] == [True]
    assert len(fake_llm.requests_for("m-primary")) == 2


async def test_all_down_reports_every_model(fake_llm: FakeLLM) -> None:
    llm = LLM(_models(fake_llm))
    fake_llm.fail("m-primary", Fault.rate_limit(retry_after=0))
    fake_llm.fail("m-backup", Fault.server_error())
    with pytest.raises(LLMUnavailable) as info:
        await llm.complete(["primary", "backup", "missing"], MESSAGES)
    llm.close()
    assert [(a.model, a.reason) for a in info.value.attempts] == [
        ("primary", "rate_limited"), ("backup", "server_error"), ("missing", "not_configured")]
    assert info.value.retryable
    assert "primary: rate limited" in str(info.value)
    rows = runs_from_attempts("bot", info.value.attempts, step=1)
    assert all(set(r) <= set(RUN_FIELDS) for r in rows)
    assert [r["fallback_reason"] for r in rows] == [None, "primary: rate_limited", "backup: server_error"]


async def test_cost_from_configured_prices(fake_llm: FakeLLM) -> None:
    prices = {"params": {"input_cost_per_token": 0.5, "output_cost_per_token": 1.0}}
    llm = LLM(_models(fake_llm, primary=prices))
    fake_llm.enqueue("m-primary", "one two three")
    done = await llm.complete(["primary"], MESSAGES)
    fake_llm.enqueue("m-backup", "one two three")
    unpriced = await llm.complete(["backup"], MESSAGES)
    llm.close()
    [a] = done.attempts
    assert a.input_tokens and a.output_tokens
    assert a.cost_usd == pytest.approx(a.input_tokens * 0.5 + a.output_tokens * 1.0)
    assert unpriced.attempts[0].cost_usd is None


async def test_embeddings_and_their_failures(fake_llm: FakeLLM) -> None:
    models = {"emb": ModelConfig(model="openai/m-emb", api_base=fake_llm.api_base, api_key=None, timeout=2.0)}
    llm = LLM(models)
    vectors, attempt = await llm.embed("emb", ["hello world", "good bye"])
    assert len(vectors) == 2 and len(vectors[0]) == fake_llm.embedding_dim
    assert attempt.ok and attempt.kind == "embedding" and attempt.input_tokens
    fake_llm.enqueue("m-emb", Fault.server_error())
    with pytest.raises(LLMUnavailable) as info:
        await llm.embed("emb", ["x"])
    llm.close()
    assert info.value.attempts[0].kind == "embedding" and info.value.attempts[0].reason == "server_error"


def test_importing_agents_does_not_import_litellm() -> None:
    code = "import sys, agents, gateway.runtime, plugins.memory; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_network_call_at_import_or_use_beyond_the_configured_server() -> None:
    """Air-gapped: every socket connect and DNS lookup, import and a call included, stays on 127.0.0.1."""
    code = textwrap.dedent("""
        import asyncio, sys
        seen = []
        def hook(event, args):
            if event == "socket.connect":
                seen.append(("connect", str(args[1])))
            elif event == "socket.getaddrinfo":
                seen.append(("dns", str(args[0])))
        sys.addaudithook(hook)
        from agents.llm import LLM, load_litellm
        from gateway.config import ModelConfig
        from tests.fakes.llm import start_fake_llm

        async def main():
            await load_litellm()
            async with start_fake_llm() as fake:
                llm = LLM({"m": ModelConfig(model="openai/x", api_base=fake.api_base, api_key="sk-t")})
                done = await llm.complete(["m"], [{"role": "user", "content": "hi"}])
                await llm.embed("m", ["hello"])
                llm.close()
                return done.content
        print(asyncio.run(main()))
        bad = [s for s in seen if "127.0.0.1" not in s[1] and "localhost" not in s[1]]
        print("OUTSIDE", bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "echo: hi" in out.stdout
    assert "OUTSIDE []" in out.stdout, out.stdout


async def test_a_model_without_credentials_does_not_take_the_others_down(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    models = _models(fake_llm)
    models["nokey"] = ModelConfig(model="openai/gpt-4o-mini")  # the real OpenAI, and no key anywhere
    llm = LLM(models)
    fake_llm.enqueue("m-backup", "still here")
    done = await llm.complete(["nokey", "backup"], MESSAGES)
    llm.close()
    assert done.content == "still here"
    assert (done.attempts[0].reason, done.attempts[0].ok) == ("not_configured", False)
    assert "credentials" in (done.attempts[0].error or "").lower()


async def test_closing_unhooks_the_router_from_litellms_global_callbacks(fake_llm: FakeLLM) -> None:
    litellm = await load_litellm()

    def hooked() -> int:
        return sum(len(getattr(litellm, n)) for n in ("success_callback", "failure_callback",
                                                      "_async_success_callback", "_async_failure_callback"))

    before = hooked()
    llm = LLM(_models(fake_llm))
    await llm.router()
    assert hooked() > before
    llm.close()
    assert hooked() == before  # reloads and restarts in one process do not pile up callbacks
    late = LLM(_models(fake_llm))
    late.close()  # closed before its Router exists: building it now gives up and unhooks
    with pytest.raises(LLMUnavailable):
        await late.router()
    assert hooked() == before


# -- the fast path: OpenAI-shaped calls through litellm's own HTTP handler, not the OpenAI SDK ------


def _sent_by_openai_sdk(request: Any) -> bool:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return "x-stainless-lang" in headers or headers.get("user-agent", "").startswith(("OpenAI/", "AsyncOpenAI/"))


async def test_openai_compatible_calls_skip_the_openai_sdk(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's per-call request transform was half of litellm's CPU per completion. If a litellm
    upgrade drops the switch, the first assertion fails here instead of the gateway quietly slowing."""
    llm = LLM(_models(fake_llm))
    fake_llm.enqueue("m-primary", ToolCalls([ToolCall("clock", {"zone": "UTC"}, id="t1")], content="Looking."))
    tools = [{"type": "function", "function": {"name": "clock", "description": "the time",
                                               "parameters": {"type": "object", "properties": {}}}}]
    done = await llm.complete(["primary"], MESSAGES, tools=tools, temperature=0.2, max_tokens=50)
    [sent] = fake_llm.requests_for("m-primary")
    assert not _sent_by_openai_sdk(sent)
    assert sent.api_key == "sk-test" and sent.tool_names == ["clock"]
    assert (sent.temperature, sent.max_tokens) == (0.2, 50)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in done.tool_calls] == [("t1", "clock", {"zone": "UTC"})]
    assert done.content == "Looking." and done.finish_reason == "tool_calls"
    assert done.attempts[0].input_tokens and done.attempts[0].output_tokens

    # the operator's way back to the SDK (litellm reads the switch per call), which proves the check above
    monkeypatch.setenv(FAST_PATH_ENV, "false")
    fake_llm.enqueue("m-primary", "via the SDK")
    assert (await llm.complete(["primary"], MESSAGES)).content == "via the SDK"
    llm.close()
    assert _sent_by_openai_sdk(fake_llm.requests_for("m-primary")[-1])


async def test_a_refused_connection_falls_back_as_unreachable(fake_llm: FakeLLM) -> None:
    models = _models(fake_llm, primary={"api_base": f"http://127.0.0.1:{_closed_port()}/v1"})
    llm = LLM(models)
    fake_llm.enqueue("m-backup", "from backup")
    done = await llm.complete(["primary", "backup"], MESSAGES)
    llm.close()
    assert [(a.model, a.reason) for a in done.attempts] == [("primary", "connection_error"), ("backup", None)]


async def test_provider_error_bodies_are_reported_by_their_message(fake_llm: FakeLLM) -> None:
    llm = LLM(_models(fake_llm))
    fake_llm.fail("m-primary", Fault.bad_request("the temperature is out of range (fake)"))
    with pytest.raises(LLMUnavailable) as info:
        await llm.complete(["primary"], MESSAGES)
    llm.close()
    [attempt] = info.value.attempts
    assert attempt.reason == "bad_request"
    assert attempt.error is not None and "the temperature is out of range (fake)" in attempt.error
    assert "{" not in attempt.error  # the message, not the provider's JSON


@pytest.mark.parametrize("model", ["deepinfra/meta-llama/Llama-3-8b", "gpt-4o-mini"])
async def test_a_keyless_model_on_the_fast_path_sends_nothing_and_the_chain_moves_on(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """Without the SDK nothing refuses a request without a key: it is caught before the Router is built."""
    for var in ("OPENAI_API_KEY", "DEEPINFRA_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    models = _models(fake_llm)
    models["nokey"] = ModelConfig(model=model)
    llm = LLM(models)
    fake_llm.enqueue("m-backup", "still here")
    done = await llm.complete(["nokey", "backup"], MESSAGES)
    llm.close()
    assert done.content == "still here"
    assert [(a.model, a.reason) for a in done.attempts] == [("nokey", "not_configured"), ("backup", None)]
    assert "credentials" in (done.attempts[0].error or "")  # found before a request left (else: unreachable)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_fast_path_still_names_the_openai_organization_and_project(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI SDK sent OpenAI-Organization/OpenAI-Project; litellm's own handler does not by itself."""
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_env")
    llm = LLM(_models(fake_llm, primary={"params": {"organization": "org-cfg"}},
                      backup={"params": {"extra_headers": {"openai-project": "proj_cfg"}}}))
    fake_llm.enqueue("m-primary", "a")
    fake_llm.enqueue("m-backup", "b")
    await llm.complete(["primary"], MESSAGES)
    await llm.complete(["backup"], MESSAGES)
    llm.close()
    [primary] = [{k.lower(): v for k, v in r.headers.items()} for r in fake_llm.requests_for("m-primary")]
    [backup] = [{k.lower(): v for k, v in r.headers.items()} for r in fake_llm.requests_for("m-backup")]
    assert (primary["openai-organization"], primary["openai-project"]) == ("org-cfg", "proj_env")
    assert backup["openai-project"] == "proj_cfg" and "openai-organization" not in backup  # the operator's header wins


async def test_no_logging_callback_sees_the_messages(fake_llm: FakeLLM) -> None:
    """agents.llm leaves litellm's message redaction off (it deep-copied every call's payload) on the
    premise that no logging callback is registered: only the Router's own usage counters are."""
    litellm = await load_litellm()
    assert litellm.turn_off_message_logging is False
    llm = LLM(_models(fake_llm))
    await llm.router()
    fake_llm.enqueue("m-primary", "hi")
    await llm.complete(["primary"], MESSAGES)
    hooked = [cb for name in ("callbacks", "success_callback", "failure_callback", "input_callback",
                              "_async_success_callback", "_async_failure_callback")
              for cb in getattr(litellm, name)]
    llm.close()
    assert hooked and all(isinstance(getattr(cb, "__self__", None), litellm.Router) for cb in hooked), hooked


def test_a_cancelled_wait_does_not_cancel_the_shared_litellm_import() -> None:
    """A gateway stopping while litellm loads cancels its waiters, not the import itself."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import asyncio
        from agents.llm import load_litellm

        async def main():
            waiter = asyncio.create_task(load_litellm())
            await asyncio.sleep(0.05)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            module = await load_litellm()
            print("loaded", module.__name__)

        asyncio.run(main())
    """)
    env = {**__import__("os").environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded litellm" in done.stdout
