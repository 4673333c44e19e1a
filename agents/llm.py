"""The LLM seam: the only module that imports litellm.

litellm is imported lazily, in a thread (the import takes seconds of CPU and
must never stall the event loop), with its remote fetches switched off so an
air-gapped gateway makes no network call the user did not configure.

Each configured ``[models.<alias>]`` (and each litellm model string a SOUL file
names directly) is one deployment of a litellm ``Router``, which owns the
provider credentials, the per-call timeout and the retries within one model.
The fallback chain (``model`` then ``fallbacks``) is walked here rather than by
the Router's own ``fallbacks``: the Router falls back on every error, including
authentication and bad-request errors, and when the whole chain fails it raises
only the first model's exception. Walking the chain ourselves lets us fall back
only on 429/5xx/timeouts/connection errors, stop at once on errors another try
cannot fix, and record for every model why it did not answer.

CPU per call matters (a worker makes one or more calls per turn): OpenAI and the
OpenAI-compatible providers are called through litellm's own HTTP handler rather
than the OpenAI SDK (litellm's ``EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER``, on
unless the operator sets it to ``false``), which halves litellm's CPU per
completion; the few things the SDK did for us on that path (refusing a keyless
request, the organization and project headers) are done here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from gateway.config import ModelConfig

__all__ = [
    "LLM",
    "Attempt",
    "Completion",
    "LLMUnavailable",
    "ToolCallRequest",
    "classify_error",
    "describe_reason",
    "load_litellm",
    "preload_litellm",
    "runs_from_attempts",
]

log = logging.getLogger("soulgate.agents.llm")

#: reasons after which the next model in the chain is tried
RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "connection_error", "not_configured"})
_REASON_TEXT = {
    "rate_limited": "rate limited",
    "server_error": "server error",
    "timeout": "timed out",
    "connection_error": "unreachable",
    "auth_error": "rejected the API key",
    "bad_request": "rejected the request",
    "context_window": "conversation too long for this model",
    "not_found": "model not found",
    "not_configured": "not configured",
    "error": "failed",
}
DEFAULT_TIMEOUT = 60.0
#: litellm's switch that sends OpenAI-shaped chat completions without the OpenAI SDK
FAST_PATH_ENV = "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"
#: providers litellm 1.106 sends through its OpenAI chat path (the one the switch changes). The
#: SDK refused to start without a key there; litellm's own handler would send the request
#: without one, so a missing key is caught before the Router is built (see _missing_key).
_OPENAI_PATH_PROVIDERS = frozenset({
    "openai", "custom_openai", "deepinfra", "perplexity", "nvidia_nim", "cerebras", "baseten",
    "sambanova", "volcengine", "anyscale", "nebius", "wandb", "clarifai",
})
_MISSING_KEY = re.compile(r"missing (\w+ )?(credentials|api[ _-]?key)|api_key client option must be set", re.I)

# -- the lazy, offline import ---------------------------------------------------------------

_import_lock = threading.Lock()
_import_future: concurrent.futures.Future[ModuleType] | None = None
#: models with prices in litellm's bundled cost map, taken at import: a Router later adds
#: an entry (with zero prices) for every deployment, which must not count as "known"
_PRICED: frozenset[str] = frozenset()


def _import_litellm() -> ModuleType:
    # Local copies of the cost map and header tables instead of downloads at import time;
    # setdefault, so an operator who wants the remote files can still ask for them.
    for var in ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
                "LITELLM_LOCAL_BLOG_POSTS", "LITELLM_LOCAL_POLICY_TEMPLATES"):
        os.environ.setdefault(var, "True")
    # OpenAI and the OpenAI-compatible providers go through litellm's own HTTP handler instead
    # of the OpenAI SDK: the SDK re-walks every message against its typed-dict schema on each
    # call, about half of litellm's CPU per completion. litellm reads this switch per call;
    # setdefault, so an operator can set it to "false" to go back to the SDK.
    os.environ.setdefault(FAST_PATH_ENV, "true")
    import litellm

    global _PRICED
    _PRICED = frozenset(litellm.model_cost)
    # No callback or telemetry may send data anywhere the operator did not configure.
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # Message redaction only changes what litellm hands to logging callbacks, and we register
    # none (the lists are emptied below; only the Router's in-process usage counters remain).
    # Left on, it deep-copies the whole logging payload on every call for nobody: ~2 ms CPU.
    litellm.turn_off_message_logging = False
    for name in ("callbacks", "success_callback", "failure_callback", "input_callback",
                 "_async_success_callback", "_async_failure_callback"):
        if isinstance(getattr(litellm, name, None), list):
            getattr(litellm, name).clear()
    # Retries belong to the Router (num_retries, honouring Retry-After), never also to the SDK
    # below it. `max_retries=0` alone is not enough: the OpenAI embedding path reads it as
    # "unset" (`max_retries or DEFAULT_MAX_RETRIES`) and retries twice anyway.
    litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[misc]  # Final in litellm, but read at call time
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # we log every failure ourselves
    return litellm


def preload_litellm() -> concurrent.futures.Future[ModuleType]:
    """Start importing litellm in a background thread (once); returns the import's future."""
    global _import_future
    with _import_lock:
        if _import_future is None:
            future: concurrent.futures.Future[ModuleType] = concurrent.futures.Future()

            def run() -> None:
                try:
                    future.set_result(_import_litellm())
                except BaseException as exc:
                    future.set_exception(exc)

            threading.Thread(target=run, name="soulgate-litellm-import", daemon=True).start()
            _import_future = future
        return _import_future


async def load_litellm() -> ModuleType:
    """litellm, imported off the event loop."""
    future = preload_litellm()
    if future.done():  # every call after the first: no thread hop
        return future.result()
    # shielded: a waiter cancelled (a stopping gateway) must not cancel the shared import,
    # which would make every later load in this process fail
    return await asyncio.shield(asyncio.wrap_future(future))


# -- results ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """One model's try at one request: what answered, or why it did not."""

    model: str
    ok: bool
    latency_ms: float
    reason: str | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    kind: str = "chat"


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Completion:
    content: str | None
    tool_calls: list[ToolCallRequest]
    finish_reason: str | None
    model: str
    attempts: list[Attempt] = field(default_factory=list)


class LLMUnavailable(Exception):
    """No model of the chain answered; ``attempts`` says why for each one tried."""

    def __init__(self, attempts: list[Attempt]) -> None:
        self.attempts = attempts
        parts = [f"{a.model}: {describe_reason(a.reason)}" for a in attempts] or ["no model to try"]
        super().__init__("; ".join(parts))

    @property
    def retryable(self) -> bool:
        return all(a.reason in RETRYABLE for a in self.attempts)


def describe_reason(reason: str | None) -> str:
    return _REASON_TEXT.get(reason or "error", reason or "failed")


def runs_from_attempts(agent: str, attempts: Sequence[Attempt], **detail: Any) -> list[dict[str, Any]]:
    """``agent_runs`` rows (keys of ``storage.RUN_FIELDS``): one per attempt.

    ``fallback_reason`` on a row says why this model was asked instead of the one
    before it in the chain.
    """
    rows = []
    for i, a in enumerate(attempts):
        prev = attempts[i - 1] if i else None
        rows.append({
            "agent": agent,
            "model": a.model,
            "fallback_reason": f"{prev.model}: {prev.reason}" if prev is not None else None,
            "input_tokens": a.input_tokens,
            "output_tokens": a.output_tokens,
            "latency_ms": round(a.latency_ms, 1),
            "cost_usd": a.cost_usd,
            "success": a.ok,
            "error": a.error,
            "detail": {**detail, "kind": a.kind, "reason": a.reason},
        })
    return rows


def classify_error(exc: BaseException, litellm: ModuleType | None = None) -> str:
    """A reason code for a failed call; :data:`RETRYABLE` ones move on to the next model."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if _MISSING_KEY.search(str(exc)):
        return "not_configured"  # found before any request left: the next model may well work
    lit = litellm
    status = getattr(exc, "status_code", None)
    if lit is not None:
        if isinstance(exc, lit.Timeout):
            return "timeout"
        if isinstance(exc, lit.ContextWindowExceededError):
            return "context_window"
        if isinstance(exc, lit.RateLimitError):
            return "rate_limited"
        if isinstance(exc, lit.AuthenticationError | lit.PermissionDeniedError):
            return "auth_error"
        if isinstance(exc, lit.APIConnectionError):
            return "connection_error"
        if isinstance(exc, lit.NotFoundError):
            return "not_found"
    if _dropped_connection(exc):
        return "connection_error"  # litellm wraps a refused or dropped connection in a "500"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_error"
    if status == 408:
        return "timeout"
    if "connection error" in str(exc).lower():
        return "connection_error"  # litellm reports a dropped connection as a 500
    if isinstance(status, int) and status >= 500:
        return "server_error"
    if status == 404:
        return "not_found"
    if isinstance(status, int) and 400 <= status < 500:
        return "bad_request"
    return "error"


def _missing_key(litellm: ModuleType, params: Mapping[str, Any]) -> str | None:
    """Why a deployment on litellm's OpenAI chat path has no API key anywhere, or None.

    The OpenAI SDK refused to send such a request ("api_key client option must be set");
    litellm's own handler (the fast path) sends it without a key, which the provider answers
    with a 401 that would stop the chain. Caught here instead, the model counts as "not
    configured" as before and the chain moves on. Resolved the way litellm resolves the key.
    """
    if params.get("api_key") or os.environ.get(FAST_PATH_ENV, "").lower() != "true":
        return None
    try:
        _, provider, key, _ = litellm.get_llm_provider(model=params["model"], api_base=params.get("api_base"))
    except Exception:
        return None  # an unknown provider: the Router reports it
    if provider not in _OPENAI_PATH_PROVIDERS or key:
        return None
    if litellm.api_key or getattr(litellm, "openai_key", None) or os.environ.get("OPENAI_API_KEY"):
        return None
    return f"missing credentials: no api_key configured for {params['model']} and none in the environment"


def _sdk_headers(litellm: ModuleType, params: dict[str, Any]) -> None:
    """Add to an OpenAI deployment the organization/project headers the OpenAI SDK would send.

    The SDK takes them from the client options or OPENAI_ORG_ID / OPENAI_PROJECT_ID; litellm's
    own handler sends neither, which would bill another organization or project than the
    operator chose. Headers the operator set in ``extra_headers`` win.
    """
    if os.environ.get(FAST_PATH_ENV, "").lower() != "true":
        return
    try:
        provider = litellm.get_llm_provider(model=params["model"], api_base=params.get("api_base"))[1]
    except Exception:
        return
    if provider != "openai":
        return
    org = (params.get("organization") or getattr(litellm, "organization", None)
           or os.environ.get("OPENAI_ORGANIZATION") or os.environ.get("OPENAI_ORG_ID"))
    project = os.environ.get("OPENAI_PROJECT_ID")
    wanted = {k: v for k, v in (("OpenAI-Organization", org), ("OpenAI-Project", project)) if isinstance(v, str) and v}
    if wanted:
        given = params.get("extra_headers") or {}
        taken = {k.lower() for k in given}
        params["extra_headers"] = {**{k: v for k, v in wanted.items() if k.lower() not in taken}, **given}


def _dropped_connection(exc: BaseException) -> bool:
    """Whether a refused, reset or dropped connection lies under ``exc`` (its cause chain)."""
    httpx = sys.modules.get("httpx")  # imported by litellm; never imported here for this
    network = (httpx.NetworkError, httpx.RemoteProtocolError) if httpx is not None else ()
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (ConnectionError, *network)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _short(exc: BaseException) -> str:
    full = str(exc).strip()
    # litellm's own HTTP handler passes the provider's JSON error body (often pretty-printed
    # over several lines) through as the message: keep only the body's own message
    head, sep, body = full.partition("OpenAIException - ")
    if sep and body.startswith("{"):
        try:
            error = json.JSONDecoder().raw_decode(body)[0].get("error")
            message = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str) and message.strip():
            full = head + sep + message.strip()
    text = full.splitlines()[0] if full else type(exc).__name__
    for prefix in ("litellm.", "OpenAIException - "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text[:300]


# -- the client -----------------------------------------------------------------------------


class LLM:
    """Completions and embeddings through one litellm Router."""

    def __init__(self, models: Mapping[str, ModelConfig], extra_models: Sequence[str] = ()) -> None:
        self.models = dict(models)
        #: litellm model strings named directly in SOUL files (credentials from the provider's env vars)
        self.extra_models = sorted({m for m in extra_models if m not in self.models})
        self._router: Any = None
        self._closed = False
        #: deployments litellm refused to set up (e.g. missing credentials), with its reason
        self.broken: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._priced: dict[str, bool] = {}
        # litellm imports its MCP gateway for every call with tools, which needs the optional
        # `mcp` package; our tools are plain functions, so skip that path when it is absent.
        self._skip_mcp = importlib.util.find_spec("mcp") is None

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal keys mean an equal Router (used to decide whether a reload must rebuild it)."""
        return (tuple(sorted(self.models.items())), tuple(self.extra_models))

    def knows(self, name: str) -> bool:
        return (name in self.models or name in self.extra_models) and name not in self.broken

    def _unknown(self, name: str, kind: str = "chat") -> Attempt:
        return Attempt(name, False, 0.0, "not_configured",
                       self.broken.get(name) or f"no model named {name!r}", kind=kind)

    def _deployment(self, name: str) -> dict[str, Any]:
        cfg = self.models.get(name)
        if cfg is None:
            return {"model_name": name, "litellm_params": {"model": name, "timeout": DEFAULT_TIMEOUT,
                                                            "max_retries": 0}}
        # Retries happen in the Router (which honours Retry-After), not also in the SDK below it.
        params: dict[str, Any] = {**cfg.params, "model": cfg.model, "timeout": cfg.timeout, "max_retries": 0}
        if cfg.api_base:
            params["api_base"] = cfg.api_base
        if cfg.api_key is not None and cfg.api_key.get_secret_value():
            params["api_key"] = cfg.api_key.get_secret_value()
        elif cfg.api_base and cfg.model.startswith("openai/"):
            # An OpenAI-compatible server of the operator's (vLLM, llama.cpp, LM Studio...) often
            # needs no key; without one the OpenAI client would pick up $OPENAI_API_KEY and send
            # the real OpenAI key to that server, or refuse to start when it is unset.
            params["api_key"] = "no-key"
        return {"model_name": name, "litellm_params": params}

    async def router(self) -> Any:
        if self._router is None:
            async with self._lock:
                if self._router is None:
                    litellm = await load_litellm()
                    model_list = [self._deployment(n) for n in [*self.models, *self.extra_models]]

                    def make(deployments: list[dict[str, Any]]) -> Any:
                        # disable_cooldowns: one user's 429 must not bench a model for everyone;
                        # the chain below moves on by itself.
                        return litellm.Router(model_list=deployments, num_retries=0, disable_cooldowns=True)

                    def build() -> Any:
                        usable = []
                        for deployment in model_list:
                            missing = _missing_key(litellm, deployment["litellm_params"])
                            if missing is None:
                                _sdk_headers(litellm, deployment["litellm_params"])
                                usable.append(deployment)
                            else:
                                self.broken[deployment["model_name"]] = missing
                                log.error("model %s cannot be used: %s", deployment["model_name"], missing)
                        try:
                            return make(usable)
                        except Exception:
                            pass
                        # The Router sets up every client at once, so one model with missing
                        # credentials would take all of them down: find it and leave it out.
                        good = []
                        for deployment in usable:
                            try:
                                make([deployment]).discard()
                                good.append(deployment)
                            except Exception as exc:
                                self.broken[deployment["model_name"]] = _short(exc)
                                log.error("model %s cannot be used: %s", deployment["model_name"], _short(exc))
                        return make(good)

                    router = await asyncio.to_thread(build)
                    if self._closed:  # closed while building (a reload, or the gateway stopping)
                        router.discard()
                        raise LLMUnavailable([])
                    self._router = router
        return self._router

    def close(self) -> None:
        """Unhook the Router's callbacks from litellm's global lists (after a reload or at stop)."""
        self._closed = True
        if self._router is not None:
            router, self._router = self._router, None
            try:
                router.discard()
            except Exception:  # best effort: an old router only costs a little per call
                log.debug("router.discard failed", exc_info=True)

    def _timing(self, name: str) -> tuple[float, int]:
        cfg = self.models.get(name)
        return (cfg.timeout, cfg.max_retries) if cfg is not None else (DEFAULT_TIMEOUT, 0)

    def _cost(self, name: str, hidden: Mapping[str, Any]) -> float | None:
        """litellm's cost where it knows the model's prices (or the config gives them), else None."""
        if name not in self._priced:
            cfg = self.models.get(name)
            model = cfg.model if cfg is not None else name
            params = cfg.params if cfg is not None else {}
            self._priced[name] = (
                "input_cost_per_token" in params or "output_cost_per_token" in params
                or model in _PRICED or model.split("/", 1)[-1] in _PRICED
            )
        cost = hidden.get("response_cost")
        return float(cost) if self._priced[name] and isinstance(cost, int | float) else None

    async def complete(
        self,
        chain: Sequence[str],
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """The first answer along ``chain``; raises :class:`LLMUnavailable` when none comes."""
        litellm = await load_litellm()
        router = await self.router()
        attempts: list[Attempt] = []
        for name in chain:
            if not self.knows(name):
                attempts.append(self._unknown(name))
                continue
            timeout, retries = self._timing(name)
            kwargs: dict[str, Any] = {"model": name, "messages": messages, "timeout": timeout,
                                      "num_retries": retries, "disable_fallbacks": True, "drop_params": True}
            if tools:
                kwargs["tools"] = tools
                if self._skip_mcp:
                    kwargs["_skip_mcp_handler"] = True
            if temperature is not None:
                kwargs["temperature"] = temperature
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            started = time.perf_counter()
            try:
                # a guard above litellm's own timeout, for retries and anything that ignores it
                # (asyncio.timeout, unlike wait_for, runs the call without wrapping it in a task)
                async with asyncio.timeout(timeout * (retries + 1) + 15):
                    resp = await router.acompletion(**kwargs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = classify_error(exc, litellm)
                attempts.append(Attempt(name, False, (time.perf_counter() - started) * 1000, reason, _short(exc)))
                log.warning("model %s failed (%s): %s", name, reason, _short(exc))
                if reason not in RETRYABLE:
                    raise LLMUnavailable(attempts) from exc
                continue
            attempts.append(self._success(name, resp, started))
            choice = resp.choices[0]
            message = choice.message
            calls = [
                ToolCallRequest(id=tc.id or f"call_{i}", name=tc.function.name or "",
                                arguments=tc.function.arguments or "")
                for i, tc in enumerate(getattr(message, "tool_calls", None) or [])
            ]
            return Completion(content=message.content, tool_calls=calls,
                              finish_reason=choice.finish_reason, model=name, attempts=attempts)
        raise LLMUnavailable(attempts)

    def _success(self, name: str, resp: Any, started: float) -> Attempt:
        usage = getattr(resp, "usage", None)
        hidden = getattr(resp, "_hidden_params", None) or {}
        return Attempt(
            name, True, (time.perf_counter() - started) * 1000,
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
            cost_usd=self._cost(name, hidden),
        )

    async def embed(self, name: str, texts: list[str]) -> tuple[list[list[float]], Attempt]:
        """One vector per text; raises :class:`LLMUnavailable` (with the one attempt) on failure."""
        litellm = await load_litellm()
        router = await self.router()
        if not self.knows(name):
            raise LLMUnavailable([self._unknown(name, "embedding")])
        timeout, retries = self._timing(name)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout * (retries + 1) + 15):
                resp = await router.aembedding(model=name, input=texts, timeout=timeout, num_retries=retries)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = classify_error(exc, litellm)
            log.warning("embedding model %s failed (%s): %s", name, reason, _short(exc))
            raise LLMUnavailable([Attempt(name, False, (time.perf_counter() - started) * 1000, reason,
                                          _short(exc), kind="embedding")]) from exc
        attempt = self._success(name, resp, started)
        attempt.kind = "embedding"
        items = [d if isinstance(d, dict) else d.model_dump() for d in resp.data]
        vectors = [[float(x) for x in d["embedding"]] for d in sorted(items, key=lambda d: d["index"])]
        if len(vectors) != len(texts):
            raise LLMUnavailable([Attempt(name, False, attempt.latency_ms, "error",
                                          f"{len(vectors)} embeddings for {len(texts)} texts", kind="embedding")])
        return vectors, attempt
