"""litellm's real client code against tests/fakes/llm.py.

These tests pin the litellm behaviour the gateway depends on (exception
classes, retries, Router fallbacks, usage, cost, streaming), so an upgrade of
litellm that changes any of it fails here first.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

# Must be set before litellm is imported: otherwise the import fetches the
# model cost map from the internet (and waits for retries when offline).
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# Same idea for the Anthropic beta-header table, fetched on first Anthropic use.
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")

import litellm
import openai
import pytest
import pytest_asyncio
from litellm.types.utils import ModelResponse

from tests.fakes import llm as llm_fakes
from tests.fakes.llm import (
    FakeLLM,
    Fault,
    Text,
    ToolCall,
    ToolCalls,
    Usage,
    cosine,
    hash_embedding,
    start_fake_llm,
)

# litellm prints a "Give Feedback / Get Help" banner to stdout on every
# exception; the gateway must keep stdout for its own logs.
litellm.suppress_debug_info = True

# litellm 1.106.2 imports its proxy MCP bridge on every completion that has
# `tools`, and that needs the optional `mcp` package (extra litellm[mcp]).
# Without it each tool request fails; the private `_skip_mcp_handler` kwarg
# skips the bridge. See test_tools_need_mcp_package_or_skip_flag.
HAS_MCP = importlib.util.find_spec("mcp") is not None
TOOLS_KW: dict[str, Any] = {} if HAS_MCP else {"_skip_mcp_handler": True}



@pytest.fixture(autouse=True)
def _openai_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests pin litellm's behaviour on its default path, through the OpenAI SDK.

    agents/llm.py switches the process to litellm's own HTTP handler
    (EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER, read per call) when it imports litellm, so a
    test of the gateway that ran earlier in the same process would otherwise change what
    is measured here; tests/agents/test_llm.py pins that path.
    """
    monkeypatch.setenv("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "false")


# Bound at module level so pytest collects the fixture here; importing the
# name directly would trip ruff's redefinition check (F811) on every test.
fake_llm = llm_fakes.fake_llm

REPO = Path(__file__).resolve().parents[1]
USER: list[Any] = [{"role": "user", "content": "hello there world"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _kw(fake: FakeLLM, **extra: Any) -> dict[str, Any]:
    # max_retries=0 switches off the openai SDK's own retries (2 by default),
    # so one test request is one HTTP request unless a test says otherwise.
    base: dict[str, Any] = {
        "model": "openai/fake-model",
        "api_base": fake.api_base,
        "api_key": "sk-test",
        "messages": USER,
        "max_retries": 0,
    }
    base.update(extra)
    return base


def _message(response: Any) -> Any:
    # litellm types choices as Choices | StreamingChoices (and tool calls as a
    # union with custom tool calls), which mypy cannot narrow; tests read
    # the first message through this one untyped door instead of ignores.
    return response.choices[0].message


def _usage(response: Any) -> Any:
    return response.usage


async def _complete(fake: FakeLLM, **extra: Any) -> ModelResponse:
    response = await litellm.acompletion(**_kw(fake, **extra))
    assert isinstance(response, ModelResponse)
    return response


# --------------------------------------------------------------------------
# Plain answers
# --------------------------------------------------------------------------


async def test_plain_answer_with_usage(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("fake-model", "Bonjour!")
    response = await _complete(fake_llm, temperature=0.2, max_tokens=50)

    assert _message(response).content == "Bonjour!"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "fake-model"
    usage = _usage(response)
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 2  # "Bonjour" and "!"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    sent = fake_llm.last_request
    assert sent.model == "fake-model"  # the "openai/" prefix only picks the provider
    assert sent.messages == USER
    assert sent.temperature == 0.2
    assert sent.max_tokens == 50
    assert sent.stream is False
    assert sent.api_key == "sk-test"
    assert sent.tools is None and sent.tool_names == []


async def test_default_echo_and_hook(fake_llm: FakeLLM) -> None:
    # Unscripted: deterministic echo of the last user message.
    response = await _complete(fake_llm)
    assert _message(response).content == "echo: hello there world"

    # A hook computes the answer from the recorded request; returning None
    # falls back to the echo.
    def shout(request: llm_fakes.RecordedRequest) -> str | None:
        if request.temperature == 0.0:
            return request.last_user_text.upper()
        return None

    fake_llm.on_request("fake-model", shout)
    cold = await _complete(fake_llm, temperature=0.0)
    warm = await _complete(fake_llm, temperature=1.0)
    assert _message(cold).content == "HELLO THERE WORLD"
    assert _message(warm).content == "echo: hello there world"

    # The queue wins over the hook.
    fake_llm.enqueue(
        "fake-model", Text("queued", usage=Usage(prompt_tokens=7, completion_tokens=1))
    )
    queued = await _complete(fake_llm, temperature=0.0)
    assert _message(queued).content == "queued"
    assert _usage(queued).prompt_tokens == 7


async def test_any_model_script_and_async_hook_returning_a_fault(fake_llm: FakeLLM) -> None:
    # "*" scripts every model that has no script of its own.
    async def gatekeeper(request: llm_fakes.RecordedRequest) -> llm_fakes.HookResult:
        await asyncio.sleep(0)
        if "forbidden" in request.last_user_text:
            return Fault.bad_request("content policy (fake)")
        return f"model {request.model} says hi"

    fake_llm.on_request(llm_fakes.ANY_MODEL, gatekeeper)
    response = await _complete(fake_llm, model="openai/whatever-7b")
    assert _message(response).content == "model whatever-7b says hi"
    with pytest.raises(litellm.BadRequestError):
        await _complete(fake_llm, messages=[{"role": "user", "content": "forbidden stuff"}])


async def test_max_tokens_truncates_with_finish_reason_length(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("fake-model", "one two three four five six")
    response = await _complete(fake_llm, max_tokens=3)
    assert _message(response).content == "one two three"
    assert response.choices[0].finish_reason == "length"
    assert _usage(response).completion_tokens == 3


# --------------------------------------------------------------------------
# Tool calls
# --------------------------------------------------------------------------


async def test_tool_calls_are_parsed_by_litellm(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(
        "fake-model",
        ToolCalls(
            [
                ToolCall("get_weather", {"city": "Paris"}, id="call_1"),
                # Malformed on purpose: litellm passes both through untouched,
                # so validating arguments and tool names is the gateway's job.
                ToolCall("get_weather", '{"city": "Par', id="call_2"),
                ToolCall("rm_rf", "{}", id="call_3"),
            ]
        ),
    )
    response = await _complete(fake_llm, tools=[WEATHER_TOOL], tool_choice="auto", **TOOLS_KW)

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = _message(response).tool_calls
    assert calls is not None
    assert [c.id for c in calls] == ["call_1", "call_2", "call_3"]
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert calls[1].function.arguments == '{"city": "Par'
    with pytest.raises(json.JSONDecodeError):
        json.loads(calls[1].function.arguments)
    assert calls[2].function.name == "rm_rf"  # never offered, still returned

    sent = fake_llm.last_request
    assert sent.tool_names == ["get_weather"]
    assert sent.tool_choice == "auto"


@pytest.mark.skipif(HAS_MCP, reason="the mcp package is installed")
async def test_tools_need_mcp_package_or_skip_flag(fake_llm: FakeLLM) -> None:
    # Pins a litellm quirk: if this starts passing tools through without the
    # flag, litellm fixed it and TOOLS_KW can go.
    with pytest.raises(litellm.APIConnectionError, match="No module named 'mcp'"):
        await _complete(fake_llm, tools=[WEATHER_TOOL])
    assert fake_llm.requests == []  # it fails before sending anything
    response = await _complete(fake_llm, tools=[WEATHER_TOOL], _skip_mcp_handler=True)
    assert _message(response).content == "echo: hello there world"
    assert "_skip_mcp_handler" not in fake_llm.last_request.body


async def test_recorded_request_shows_a_tool_was_not_offered(fake_llm: FakeLLM) -> None:
    await _complete(fake_llm, tools=[WEATHER_TOOL], **TOOLS_KW)
    await _complete(fake_llm)
    first, second = fake_llm.requests_for("fake-model")
    assert "get_weather" in first.tool_names
    assert "get_weather" not in second.tool_names and second.tools is None


# --------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------


async def _collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


async def test_streaming_text_with_usage_in_last_chunk(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("fake-model", "streamed answer here")
    stream = await litellm.acompletion(
        **_kw(fake_llm, stream=True, stream_options={"include_usage": True})
    )
    chunks = await _collect(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed answer here"
    assert [c.choices[0].finish_reason for c in chunks if c.choices].count("stop") == 1
    # Only the final chunk carries usage; earlier chunks have no attribute at all.
    assert hasattr(chunks[-1], "usage") and chunks[-1].usage.completion_tokens == 3
    assert not any(hasattr(c, "usage") for c in chunks[:-1])
    assert fake_llm.last_request.stream and fake_llm.last_request.include_usage

    rebuilt = litellm.stream_chunk_builder(chunks, messages=USER)
    assert rebuilt is not None
    assert _message(rebuilt).content == "streamed answer here"
    assert _usage(rebuilt).total_tokens == chunks[-1].usage.total_tokens


async def test_streaming_without_include_usage_reports_zero_usage(fake_llm: FakeLLM) -> None:
    # litellm does not add stream_options by itself, and stream_chunk_builder
    # then reports 0 tokens: the gateway must ask for include_usage to bill.
    stream = await litellm.acompletion(**_kw(fake_llm, stream=True))
    chunks = await _collect(stream)
    assert "stream_options" not in fake_llm.last_request.body
    rebuilt = litellm.stream_chunk_builder(chunks, messages=USER)
    assert rebuilt is not None
    assert _message(rebuilt).content == "echo: hello there world"
    assert _usage(rebuilt).total_tokens == 0


async def test_streaming_tool_calls_are_assembled(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(
        "fake-model",
        ToolCalls([ToolCall("get_weather", {"city": "Reykjavik", "unit": "C"})]),
    )
    stream = await litellm.acompletion(
        **_kw(fake_llm, stream=True, tools=[WEATHER_TOOL], **TOOLS_KW)
    )
    rebuilt = litellm.stream_chunk_builder(await _collect(stream), messages=USER)
    assert rebuilt is not None
    choice = rebuilt.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = _message(rebuilt).tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Reykjavik", "unit": "C"}


async def test_stream_cut_mid_way_raises_midstream_error(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("fake-model", Fault.drop_stream(after_chunks=3))
    stream = await litellm.acompletion(**_kw(fake_llm, stream=True))
    received: list[str] = []
    with pytest.raises(litellm.exceptions.MidStreamFallbackError) as info:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    # Part of the answer was already delivered before the error: the gateway
    # must not have sent it on to the user as if it were complete.
    assert "".join(received) == "echo: hello "
    assert isinstance(info.value, litellm.ServiceUnavailableError)
    assert fake_llm.last_request.outcome == "drop_stream"


# --------------------------------------------------------------------------
# Failures: which exception litellm raises
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected", "status"),
    [
        (Fault.rate_limit(retry_after=0.1), litellm.RateLimitError, 429),
        (Fault.server_error(), litellm.InternalServerError, 500),
        (Fault.unavailable(), litellm.ServiceUnavailableError, 503),
        (Fault.auth_error(), litellm.AuthenticationError, 401),
        (Fault.bad_request(), litellm.BadRequestError, 400),
        (Fault.context_window(), litellm.ContextWindowExceededError, 400),
        (Fault.http(404, "model not found"), litellm.NotFoundError, 404),
        (Fault.disconnect(), litellm.InternalServerError, 500),
    ],
    ids=["429", "500", "503", "401", "400", "context", "404", "disconnect"],
)
async def test_exception_class_per_failure(
    fake_llm: FakeLLM, fault: Fault, expected: type[Exception], status: int
) -> None:
    fake_llm.fail("fake-model", fault)
    with pytest.raises(expected) as info:
        await _complete(fake_llm)
    assert getattr(info.value, "status_code", None) == status
    # Every litellm exception is also the matching openai exception class.
    assert isinstance(info.value, openai.OpenAIError)
    assert len(fake_llm.requests_for("fake-model")) == 1  # max_retries=0 means one attempt


async def test_hang_past_timeout_raises_timeout(fake_llm: FakeLLM) -> None:
    fake_llm.fail("fake-model", Fault.hang())
    started = time.monotonic()
    with pytest.raises(litellm.Timeout) as info:
        await _complete(fake_llm, timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert info.value.status_code == 408
    assert isinstance(info.value, openai.APITimeoutError)
    assert fake_llm.last_request.outcome == "hang"


async def test_connection_refused_is_internal_server_error() -> None:
    # A port nobody listens on: bind, read the number, close.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(litellm.InternalServerError) as info:
        await litellm.acompletion(
            model="openai/fake-model",
            api_base=f"http://127.0.0.1:{port}/v1",
            api_key="sk-test",
            messages=USER,
            max_retries=0,
        )
    # Not APIConnectionError, despite the message saying "Connection error".
    assert not isinstance(info.value, litellm.APIConnectionError)
    assert "Connection error" in str(info.value)


async def test_openai_sdk_retries_by_default_and_honours_retry_after(fake_llm: FakeLLM) -> None:
    # Without max_retries, the openai SDK underneath litellm tries 3 times,
    # waiting for Retry-After; 401/400 are never retried.
    fake_llm.fail("fake-model", Fault.rate_limit(retry_after=0.1), times=2)
    response = await litellm.acompletion(
        model="openai/fake-model", api_base=fake_llm.api_base, api_key="sk", messages=USER
    )
    assert _message(response).content == "echo: hello there world"
    assert [r.outcome for r in fake_llm.requests] == ["http:429", "http:429", "ok"]
    gaps = [
        b.received_at - a.received_at
        for a, b in zip(fake_llm.requests, fake_llm.requests[1:], strict=False)
    ]
    assert all(gap >= 0.09 for gap in gaps)


async def test_require_api_key(fake_llm: FakeLLM) -> None:
    async with start_fake_llm(require_api_key="sk-right") as fake:
        with pytest.raises(litellm.AuthenticationError):
            await _complete(fake, api_key="sk-wrong")
        ok = await _complete(fake, api_key="sk-right")
        assert _message(ok).content == "echo: hello there world"


# --------------------------------------------------------------------------
# Router: fallbacks, timeouts, and who answered
# --------------------------------------------------------------------------


def _deployment(fake: FakeLLM, group: str, model: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": f"openai/{model}",
            "api_base": fake.api_base,
            "api_key": "sk-test",
            **params,
        },
        # An explicit id is what _hidden_params["model_id"] reports.
        "model_info": {"id": f"{group}-deployment"},
    }


@pytest_asyncio.fixture
async def router_factory() -> AsyncIterator[Callable[..., litellm.Router]]:
    routers: list[litellm.Router] = []

    def make(**kwargs: Any) -> litellm.Router:
        router = litellm.Router(**kwargs)
        routers.append(router)
        return router

    yield make
    # A Router hooks itself into litellm's global callback lists; discard()
    # unhooks it so routers do not pile up across tests.
    for router in routers:
        router.discard()


async def test_router_falls_back_on_429_and_reports_who_answered(
    fake_llm: FakeLLM, router_factory: Callable[..., litellm.Router]
) -> None:
    router = router_factory(
        model_list=[
            _deployment(fake_llm, "primary", "fake-primary"),
            _deployment(fake_llm, "backup", "fake-backup"),
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=0,
    )
    fake_llm.fail("fake-primary", Fault.rate_limit(retry_after=0.1))
    fake_llm.enqueue("fake-backup", "from backup")

    response = await router.acompletion(
        model="primary", messages=USER, include_fallback_errors=True
    )

    assert _message(response).content == "from backup"
    assert response.model == "fake-backup"  # the provider's model name
    hidden = response._hidden_params
    assert hidden["model_id"] == "backup-deployment"
    assert hidden["litellm_model_name"] == "openai/fake-backup"
    assert hidden["api_base"] == fake_llm.api_base
    headers = hidden["additional_headers"]
    assert headers["x-litellm-model-group"] == "backup"
    assert headers["x-litellm-attempted-fallbacks"] == 1
    assert headers["x-litellm-attempted-retries"] == 0
    (why,) = json.loads(headers["x-litellm-fallback-errors"])
    assert why["code"] == "429" and why["type"] == "throttling_error"
    assert [(r.model, r.outcome) for r in fake_llm.requests] == [
        ("fake-primary", "http:429"),
        ("fake-backup", "ok"),
    ]


async def test_router_raises_the_primary_error_when_all_fail(
    fake_llm: FakeLLM, router_factory: Callable[..., litellm.Router]
) -> None:
    router = router_factory(
        model_list=[
            _deployment(fake_llm, "primary", "fake-primary"),
            _deployment(fake_llm, "backup", "fake-backup"),
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=0,
    )
    fake_llm.fail("fake-primary", Fault.rate_limit(retry_after=0.1))
    fake_llm.fail("fake-backup", Fault.server_error())
    with pytest.raises(litellm.RateLimitError) as info:
        await router.acompletion(model="primary", messages=USER)
    # The backup's failure only shows in the message text.
    assert "Fallback to backup also failed" in str(info.value)
    assert [r.outcome for r in fake_llm.requests] == ["http:429", "http:500"]


async def test_router_timeout_then_fallback(
    fake_llm: FakeLLM, router_factory: Callable[..., litellm.Router]
) -> None:
    router = router_factory(
        model_list=[
            _deployment(fake_llm, "primary", "fake-primary", timeout=0.3),
            _deployment(fake_llm, "backup", "fake-backup"),
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=0,
    )
    fake_llm.fail("fake-primary", Fault.hang())
    started = time.monotonic()
    response = await router.acompletion(model="primary", messages=USER)
    assert time.monotonic() - started < 2.0
    assert response._hidden_params["model_id"] == "backup-deployment"


async def test_router_streaming_reports_deployment(
    fake_llm: FakeLLM, router_factory: Callable[..., litellm.Router]
) -> None:
    router = router_factory(
        model_list=[_deployment(fake_llm, "primary", "fake-primary")], num_retries=0
    )
    stream = await router.acompletion(
        model="primary", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = await _collect(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "echo: hello there world"
    )
    assert stream._hidden_params["model_id"] == "primary-deployment"
    assert chunks[-1].usage.total_tokens > 0


# --------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------


async def test_completion_cost_for_unpriced_model_raises(fake_llm: FakeLLM) -> None:
    response = await _complete(fake_llm)
    # acompletion itself swallows the failure and leaves the cost empty ...
    assert response._hidden_params["response_cost"] is None
    # ... while completion_cost raises a plain Exception subclass (not an
    # openai error), so callers must catch it.
    with pytest.raises(litellm.exceptions.ModelNotMappedError):
        litellm.completion_cost(completion_response=response)
    # Explicit per-token prices work for any model.
    cost = litellm.completion_cost(
        completion_response=response,
        custom_cost_per_token={"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
    )
    usage = _usage(response)
    assert cost == pytest.approx(usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6)


async def test_completion_cost_for_known_model_uses_bundled_prices(fake_llm: FakeLLM) -> None:
    # The fake answers any model name, so a priced name exercises the bundled map.
    response = await _complete(fake_llm, model="openai/gpt-4o-mini")
    prices = litellm.model_cost["gpt-4o-mini"]
    usage = _usage(response)
    expected = (
        usage.prompt_tokens * prices["input_cost_per_token"]
        + usage.completion_tokens * prices["output_cost_per_token"]
    )
    assert litellm.completion_cost(completion_response=response) == pytest.approx(expected)
    assert response._hidden_params["response_cost"] == pytest.approx(expected)


# --------------------------------------------------------------------------
# Embeddings and models
# --------------------------------------------------------------------------


async def test_aembedding_is_deterministic_and_similarity_tracks_overlap(
    fake_llm: FakeLLM,
) -> None:
    texts = [
        "The invoice for March is overdue",
        "Please pay the overdue March invoice",
        "My cat likes to sleep in the sun",
    ]
    response = await litellm.aembedding(
        model="openai/fake-embed", input=texts, api_base=fake_llm.api_base, api_key="sk-test"
    )
    vectors = [item["embedding"] for item in response.data]
    assert all(len(v) == 64 for v in vectors)
    assert vectors[0] == pytest.approx(hash_embedding(texts[0]))
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0)
    assert cosine(vectors[0], vectors[1]) > 0.5 > cosine(vectors[0], vectors[2])
    assert response.usage.prompt_tokens > 0
    assert fake_llm.last_request.path == "/v1/embeddings"
    assert fake_llm.last_request.input == texts


async def test_embeddings_base64_and_dimensions_via_openai_sdk(fake_llm: FakeLLM) -> None:
    # The openai SDK asks for base64 by default and decodes it; litellm sends
    # no encoding_format. Both must give the same vector.
    client = openai.AsyncOpenAI(base_url=fake_llm.api_base, api_key="sk-test")
    result = await client.embeddings.create(model="fake-embed", input="hello", dimensions=16)
    assert fake_llm.last_request.body["encoding_format"] == "base64"
    assert result.data[0].embedding == pytest.approx(hash_embedding("hello", 16), abs=1e-6)
    await client.close()


async def test_list_models(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue("other-model", "x")  # scripting a model makes it listed
    client = openai.AsyncOpenAI(base_url=fake_llm.api_base, api_key="sk-test")
    page = await client.models.list()
    assert [m.id for m in page.data] == ["fake-model", "other-model"]
    await client.close()


# --------------------------------------------------------------------------
# Latency and chaos
# --------------------------------------------------------------------------


async def test_fixed_latency(fake_llm: FakeLLM) -> None:
    fake_llm.set_latency("fake-model", 0.3)
    started = time.monotonic()
    await _complete(fake_llm)
    assert time.monotonic() - started >= 0.3


async def test_chaos_is_reproducible_with_a_seed() -> None:
    async def outcomes() -> list[str]:
        async with start_fake_llm() as fake:
            fake.chaos(
                "fake-model", 0.4, seed=1234, faults=[Fault.server_error(), Fault.rate_limit()]
            )
            for _ in range(25):
                try:
                    await _complete(fake)
                except (litellm.InternalServerError, litellm.RateLimitError):
                    pass
            return [r.outcome for r in fake.requests]

    first, second = await outcomes(), await outcomes()
    assert first == second
    failures = sum(o != "ok" for o in first)
    assert 3 <= failures <= 17
    assert {"http:500", "http:429", "ok"} == set(first)


# --------------------------------------------------------------------------
# No traffic off the machine; import time and CPU per call
# --------------------------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import json, os, sys, time

    outbound = []

    def audit(event, args):
        # Block (and remember) any name lookup or connect that is not loopback,
        # so nothing can leave the machine even if litellm tried.
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else str(address)
        else:
            return
        if isinstance(host, bytes):
            host = host.decode()
        if host not in ("127.0.0.1", "localhost", "::1", None):
            outbound.append(f"{event} {host}")
            raise PermissionError(f"blocked {host}")

    sys.addaudithook(audit)
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    wall, cpu = time.perf_counter(), time.process_time()
    import litellm
    import_wall, import_cpu = time.perf_counter() - wall, time.process_time() - cpu
    litellm.suppress_debug_info = True
    import asyncio

    async def main():
        kw = dict(model="openai/fake-model", api_base=sys.argv[1], api_key="sk",
                  messages=[{"role": "user", "content": "hi"}], max_retries=0)
        await litellm.acompletion(**kw)  # first call pays for lazy imports
        for _ in range(10):
            await litellm.acompletion(**kw)
        n = 50
        cpu = time.process_time()
        for _ in range(n):
            await litellm.acompletion(**kw)
        per_call = (time.process_time() - cpu) / n
        await litellm.aembedding(model="openai/e", input="x", api_base=sys.argv[1], api_key="sk")
        router = litellm.Router(model_list=[{"model_name": "m", "litellm_params": {
            "model": "openai/fake-model", "api_base": sys.argv[1], "api_key": "sk"}}])
        await router.acompletion(model="m", messages=kw["messages"])
        return per_call

    per_call = asyncio.run(main())
    print(json.dumps({"outbound": outbound, "import_wall_s": import_wall,
                      "import_cpu_s": import_cpu, "cpu_ms_per_call": per_call * 1000}))
    """
)


async def test_litellm_makes_no_outbound_connections_and_measure_cost(
    fake_llm: FakeLLM,
) -> None:
    # A fresh interpreter, so the import is measured cold and the audit hook is
    # in place before litellm loads. The fake runs here, so its CPU is not counted.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE,
        fake_llm.api_base,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report["outbound"] == []
    print(
        f"\nlitellm import: {report['import_wall_s']:.2f}s wall, "
        f"{report['import_cpu_s']:.2f}s CPU; "
        f"acompletion: {report['cpu_ms_per_call']:.2f} ms CPU/call"
    )
