"""Fake Telegram Bot API server for tests and benchmarks.

aiogram's real client talks to it over HTTP on 127.0.0.1 (random free port)::

    async with start_fake_telegram() as tg:
        bot = tg.make_bot()  # Bot(token, session=AiohttpSession(api=...from_base(tg.base_url)))
        tg.push_private_text("hi")
        updates = await bot.get_updates(timeout=5)
        await bot.send_message(updates[0].message.chat.id, "<b>yo</b>", parse_mode="HTML")
        assert tg.sent[-1].text == "<b>yo</b>"

It follows the Bot API server (tdlib/telegram-bot-api) where a gateway can get it
wrong: getUpdates offsets, long polling and 409 conflicts, the HTML entity parser
and its error texts, UTF-16 length limits, flood-control answers. Tests script
failures with ``fail_next``/``flood_next`` and may switch on rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

DEFAULT_TOKEN = "123456:TEST"
TEXT_LIMIT, CAPTION_LIMIT = 4096, 1024  # UTF-16 code units, counted after entity parsing
POLL_CONFLICT = ("Conflict: terminated by other getUpdates request; "
                 "make sure that only one bot instance is running")
WEBHOOK_CONFLICT = ("Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first")
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message")
# aiogram posts every value as a form field and JSON-encodes the non-strings; these
# fields are strings even when they look like JSON ("123", "true").
_STRING_FIELDS = {"text", "caption", "parse_mode", "action", "url", "secret_token", "file_id",
                  "photo", "document", "voice", "sticker", "inline_message_id", "emoji"}
# Methods that put a message in a chat and so count against flood control.
_SEND_METHODS = {"sendmessage", "sendphoto", "senddocument", "sendvoice", "sendsticker",
                 "sendaudio", "sendvideo", "sendanimation", "sendmediagroup", "copymessage",
                 "forwardmessage", "editmessagetext"}
Handler = Callable[[dict[str, Any], dict[str, bytes]], Awaitable[Any]]


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class ApiError(Exception):
    """An error answer: ``{"ok": false, "error_code": ..., "description": ...}``."""

    def __init__(self, code: int, description: str, **parameters: int) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

    def body(self) -> dict[str, Any]:
        out = {"ok": False, "error_code": self.code, "description": self.description}
        return {**out, "parameters": self.parameters} if self.parameters else out


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


# -- HTML parse mode: the rules of tdlib's parse_html (td/telegram/MessageEntity.cpp) --------

_TAGS = {"a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins", "tg-spoiler",
         "tg-emoji", "span", "pre", "code", "blockquote"}
_SIMPLE = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
           "ins": "underline", "s": "strikethrough", "strike": "strikethrough",
           "del": "strikethrough", "tg-spoiler": "spoiler", "span": "spoiler"}
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}  # the only named entities supported
_ENTITY_RE = re.compile(r"&(?:#[xX]([0-9a-fA-F]+)|#([0-9]+)|([a-zA-Z]+));?")  # ";" is optional
_SPACE = " \t\r\n\v\0"  # tdlib's is_space; the end of the text counts as "\0"


def _decode_entity(text: str, i: int) -> tuple[str, int] | None:
    m = _ENTITY_RE.match(text, i)
    if m is None:
        return None
    if m.group(3) is not None:
        ch = _NAMED.get(m.group(3))
        return (ch, m.end()) if ch else None
    code = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    return (chr(code), m.end()) if 0 < code < 0x10FFFF else None


def parse_html(text: str, *, strict_ampersand: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Return (plain text, Bot API entities) or raise ValueError with tdlib's wording.

    Telegram keeps a ``&`` that starts no known entity as a literal character. With
    ``strict_ampersand`` the fake rejects it: an unescaped ``&`` silently turns text
    such as ``&lt;`` into ``<``, and escaping is the gateway's job.
    """
    out: list[str] = []  # one character per item
    pos16, i, n = 0, 0, len(text)
    stack: list[tuple[str, str, int, int]] = []  # (tag, argument, utf16 offset, len(out))
    entities: list[dict[str, Any]] = []

    def at(j: int) -> str:
        return text[j] if j < n else "\0"

    def skip_spaces(j: int) -> int:
        while j < n and text[j] in _SPACE:
            j += 1
        return j

    def err(what: str, j: int, tail: str = "") -> ValueError:  # tdlib counts UTF-8 bytes
        return ValueError(f"{what} at byte offset {len(text[:j].encode())}{tail}")

    while i < n:
        c = text[i]
        if c == "&":
            decoded = _decode_entity(text, i)
            if decoded is not None:
                out.append(decoded[0])
                pos16, i = pos16 + utf16_len(decoded[0]), decoded[1]
                continue
            if strict_ampersand:
                raise err('Character "&" must be escaped as "&amp;"', i)
        if c != "<":
            out.append(c)
            pos16, i = pos16 + utf16_len(c), i + 1
            continue
        begin, i = i, i + 1
        if at(i) != "/":  # a start tag
            while at(i) not in _SPACE and at(i) != ">":
                i += 1
            tag = text[begin + 1:i].lower()
            if i >= n:
                raise err("Unclosed start tag", begin)
            if tag not in _TAGS:
                raise err(f'Unsupported start tag "{tag}"', begin)
            arg = ""
            while at(i) != ">":
                i = skip_spaces(i)
                if at(i) == ">":
                    break
                name_start = i
                while at(i) not in _SPACE and at(i) not in "=>":
                    i += 1
                name, i = text[name_start:i], skip_spaces(i)
                if not name:
                    raise err(f'Empty attribute name in the tag "{tag}"', begin)
                if tag == "blockquote" and name == "expandable" and at(i) != "=":
                    arg = "expandable"  # the one attribute allowed without a value
                    continue
                if at(i) != "=":
                    raise err("Expected equal sign in declaration of an attribute of the tag "
                              f'"{tag}"', begin)
                i = skip_spaces(i + 1)
                if i >= n:
                    raise err(f'Unclosed start tag "{tag}"', begin)
                if at(i) in "'\"":  # a quoted value may contain entities
                    quote, i, chars = at(i), i + 1, []
                    while i < n and text[i] != quote:
                        decoded = _decode_entity(text, i) if text[i] == "&" else None
                        chars.append(decoded[0] if decoded else text[i])
                        i = decoded[1] if decoded else i + 1
                    value, i = "".join(chars), min(i + 1, n)
                else:  # an unquoted name token, case-insensitive
                    token_start = i
                    while at(i).isalnum() or at(i) in ".-":
                        i += 1
                    value = text[token_start:i].lower()
                    if at(i) not in _SPACE and at(i) != ">":
                        raise err("Unexpected end of name token", token_start)
                if i >= n:
                    raise err("Unclosed start tag", begin)
                if (tag, name) in (("a", "href"), ("tg-emoji", "emoji-id")):
                    arg = value
                elif tag == "code" and name == "class" and value.startswith("language-"):
                    arg = value[9:]
                elif tag == "span" and name == "class" and value.startswith("tg-"):
                    arg = value[3:]
            if tag == "span" and arg != "spoiler":
                raise err('Tag "span" must have class "tg-spoiler"', begin)
            stack.append((tag, arg, pos16, len(out)))
            i += 1
            continue
        if not stack:  # an end tag
            raise err("Unexpected end tag", begin)
        i += 1
        while at(i) not in _SPACE and at(i) != ">":
            i += 1
        end_name, i = text[begin + 2:i].lower(), skip_spaces(i)
        if at(i) != ">":
            raise err("Unclosed end tag", begin)
        i += 1
        tag, arg, start, first_char = stack.pop()
        if end_name and end_name != tag:  # "</>" closes whatever is open, as in tdlib
            raise err("Unmatched end tag", begin, f', expected "</{tag}>", found "</{end_name}>"')
        if pos16 == start:
            continue  # empty entities are dropped
        ent: dict[str, Any] = {"offset": start, "length": pos16 - start}
        last = entities[-1] if entities else None
        same = last is not None and (last["offset"], last["length"]) == (start, pos16 - start)
        if tag in _SIMPLE:
            ent["type"] = _SIMPLE[tag]
        elif tag == "tg-emoji":
            if not arg.isdigit() or int(arg) == 0:
                raise ValueError("Invalid custom emoji identifier specified")
            ent.update(type="custom_emoji", custom_emoji_id=arg)
        elif tag == "a":  # without href the link is the text itself
            ent.update(type="text_link", url=arg or "".join(out[first_char:]))
        elif tag == "blockquote":
            ent["type"] = "expandable_blockquote" if arg else "blockquote"
        elif tag == "pre" and same and last and last["type"] == "code" and "language" in last:
            last["type"] = "pre"  # <pre><code class="language-x">...</code></pre>
            continue
        elif tag == "code" and same and last and last["type"] == "pre" and arg:
            last["language"] = arg
            continue
        else:
            ent.update(type=tag, **({"language": arg} if arg else {}))
        entities.append(ent)
    if stack:
        raise ValueError(f"Can't find end tag corresponding to start tag {stack[-1][0]}")
    for ent in entities:
        if ent["type"] == "code":
            ent.pop("language", None)  # a language means something only inside <pre>
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


_MENTION_RE = re.compile(r"(?<!\w)@[A-Za-z0-9_]{2,32}(?!\w)")
_COMMAND_RE = re.compile(r"(?<![\w/<>])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>])")


def detect_entities(text: str) -> list[dict[str, Any]]:
    """The mention and bot_command entities Telegram adds to incoming text itself."""
    found = [("mention", m) for m in _MENTION_RE.finditer(text)]
    found += [("bot_command", m) for m in _COMMAND_RE.finditer(text)]
    entities = [{"type": kind, "offset": utf16_len(text[:m.start()]),
                 "length": utf16_len(m.group())} for kind, m in found]
    return sorted(entities, key=lambda e: e["offset"])


# -- records -------------------------------------------------------------------------------


@dataclass
class Call:
    method: str  # as the client spelled it (aiogram: camelCase)
    params: dict[str, Any]  # JSON-decoded form fields
    uploads: dict[str, bytes]  # multipart file parts by field name
    content_type: str


@dataclass
class SentMessage:
    """A message the bot sent (or an edit), ready for assertions."""

    method: str
    chat_id: int | str
    message_id: int
    text: str | None  # text or caption exactly as sent, tags included
    parse_mode: str | None
    reply_parameters: dict[str, Any] | None
    message_thread_id: int | None
    params: dict[str, Any]
    message: dict[str, Any]  # the Message object the fake answered with
    upload: bytes | None = None


@dataclass
class FakeFile:
    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes


@dataclass
class _Fault:
    times: int
    error: ApiError
    delay: float
    after_effect: bool


@dataclass(frozen=True)
class RateLimits:
    """(messages, seconds) windows; Telegram's documented soft limits by default."""

    per_chat: tuple[int, float] = (1, 1.0)
    per_group: tuple[int, float] = (20, 60.0)
    per_bot: tuple[int, float] = (30, 1.0)


# -- the server ----------------------------------------------------------------------------


class FakeTelegram:
    def __init__(self, token: str = DEFAULT_TOKEN, *, bot_username: str = "soulgate_bot",
                 privacy_mode: bool = True, rate_limits: RateLimits | None = None,
                 strict_ampersand: bool = True, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.token, self.bot_username, self.strict_ampersand = token, bot_username, strict_ampersand
        self.bot_user = {"id": int(token.split(":")[0]), "is_bot": True,
                         "first_name": bot_username.removesuffix("_bot").title(),
                         "username": bot_username}
        self.privacy_mode = privacy_mode  # reported by getMe only; the test decides what to push
        self.rate_limits = rate_limits  # None: no flood control unless scripted
        self.clock = clock  # injectable so rate-limit tests need not sleep
        self.next_update_id = 1  # settable: Telegram's update ids are not continuous
        self.next_message_id = 1
        self.calls: dict[str, list[Call]] = defaultdict(list)
        self.sent: list[SentMessage] = []
        self.edits: list[SentMessage] = []
        self.updates: list[dict[str, Any]] = []  # pending, i.e. not yet confirmed by an offset
        self.allowed_updates: list[str] | None = None
        self.last_offset: int | None = None
        self.webhook: dict[str, Any] | None = None  # setWebhook parameters while one is set
        self.files: dict[str, FakeFile] = {}
        self.count_429 = 0  # every 429 answered, scripted or from rate limits
        self.rate_limited = 0  # the 429s caused by rate limits alone
        self.base_url = ""
        self._messages: dict[tuple[int | str, int], dict[str, Any]] = {}
        self._migrated: dict[int, int] = {}
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._stamps: dict[Any, deque[float]] = defaultdict(deque)  # rate-limit windows
        self._poller: asyncio.Future[None] | None = None
        self._changed = asyncio.Condition()
        self._bots: list[Bot] = []
        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, Handler] = {
            "getme": self._get_me, "getupdates": self._get_updates, "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook, "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message, "editmessagetext": self._edit_message_text,
            "sendchataction": self._ok, "getfile": self._get_file,
            **{f"send{kind}": self._media_sender(kind)
               for kind in ("photo", "document", "voice", "sticker")},
        }

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)  # GET works too
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        # handler_cancellation: a client that gave up on a long poll must not keep it alive.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._wake()
        for bot in self._bots:
            await bot.session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def make_bot(self, token: str | None = None) -> Bot:
        """An aiogram Bot wired to this server; stop() closes its session."""
        api = TelegramAPIServer.from_base(self.base_url)
        self._bots.append(Bot(token=token or self.token, session=AiohttpSession(api=api)))
        return self._bots[-1]

    # -- scripting ---------------------------------------------------------------------

    def fail_next(self, method: str, times: int = 1, *, error_code: int = 500,
                  description: str = "Internal Server Error", delay: float = 0.0,
                  after_effect: bool = False, **parameters: int) -> None:
        """The next ``times`` calls of ``method`` ("*": any method) answer this error.

        ``parameters`` become ResponseParameters (retry_after, migrate_to_chat_id).
        ``after_effect=True`` lets the call take effect (the message is sent) before
        the error is answered: a lost response, the send's outcome unknown to the bot.
        """
        fault = _Fault(times, ApiError(error_code, description, **parameters), delay, after_effect)
        self._faults[method.lower()].append(fault)

    def flood_next(self, method: str, times: int = 1, retry_after: int = 5) -> None:
        self.fail_next(method, times, error_code=429, retry_after=retry_after,
                       description=f"Too Many Requests: retry after {retry_after}")

    def register_file(self, content: bytes, file_path: str | None = None,
                      file_id: str | None = None) -> FakeFile:
        """Make ``content`` reachable through getFile and /file/bot<token>/<file_path>."""
        n = len(self.files) + 1
        f = FakeFile(file_id or f"FILE{n:06d}", f"U{n:06d}", file_path or f"files/{n}", content)
        self.files[f.file_id] = f
        return f

    # -- assertions --------------------------------------------------------------------

    def sent_to(self, chat_id: int | str | None = None) -> list[SentMessage]:
        return [s for s in self.sent if chat_id is None or s.chat_id == chat_id]

    async def wait_for_messages(self, chat_id: int | str | None = None, count: int = 1,
                                within: float = 5.0) -> list[SentMessage]:
        """Wait until ``count`` messages were sent to ``chat_id`` (None: any chat)."""
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: len(self.sent_to(chat_id)) >= count)
        except TimeoutError:
            got = [s.text for s in self.sent_to(chat_id)]
            raise AssertionError(f"wanted {count} messages to {chat_id}, got {got}") from None
        return self.sent_to(chat_id)

    @property
    def polling(self) -> bool:
        """True while a getUpdates long poll is waiting."""
        return self._poller is not None and not self._poller.done()

    async def wait_until_polling(self, within: float = 5.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.polling)

    # -- incoming updates --------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update; ``update_id`` is assigned unless the test set one."""
        update.setdefault("update_id", self.next_update_id)
        self.next_update_id = max(self.next_update_id, update["update_id"] + 1)
        for key in ("message", "edited_message", "channel_post"):
            if key in update:  # known messages can be replied to and edited
                self._messages[(update[key]["chat"]["id"], update[key]["message_id"])] = update[key]
        self.updates.append(update)
        self._wake()
        return update

    def user(self, user_id: int = 1001, first_name: str = "Alice", **extra: Any) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": first_name,
                "username": first_name.lower(), "language_code": "en", **extra}

    def chat(self, chat_id: int, **extra: Any) -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "Alice", **extra}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": f"Group {chat_id}", **extra}

    def message(self, chat: dict[str, Any], text: str | None = None, *,
                from_user: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """A Message dict; mention/bot_command entities are detected unless given."""
        msg: dict[str, Any] = {"message_id": self._new_message_id(), "date": int(time.time()),
                               "chat": chat, "from": from_user or self.user()}
        if text is not None:
            msg["text"] = text
            if entities := detect_entities(text):
                msg["entities"] = entities
        return {**msg, **fields}

    def push_message(self, message: dict[str, Any], kind: str = "message") -> dict[str, Any]:
        return self.push_update({kind: message})

    def push_private_text(self, text: str, user_id: int = 1001, **fields: Any) -> dict[str, Any]:
        user = self.user(user_id)
        return self.push_message(self.message(self.chat(user_id), text, from_user=user, **fields))

    def push_group_text(self, text: str, chat_id: int = -1001234567890, *,
                        reply_to: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """A group message. Write ``@bot`` or ``/cmd@bot`` in the text to get the entity;
        ``reply_to`` is the replied-to Message, e.g. ``fake.sent[0].message``."""
        if reply_to is not None:
            fields["reply_to_message"] = reply_to
        return self.push_message(self.message(self.chat(chat_id), text, **fields))

    def push_topic_text(self, text: str, thread_id: int, chat_id: int = -1001234567890,
                        **fields: Any) -> dict[str, Any]:
        # In a forum topic Telegram sets reply_to_message to the topic's creation
        # message even when the user replied to nothing: it is not a reply to the bot.
        forum = self.chat(chat_id, is_forum=True)
        root = {"message_id": thread_id, "date": int(time.time()), "chat": forum,
                "message_thread_id": thread_id,
                "forum_topic_created": {"name": "Topic", "icon_color": 7322096}}
        fields.setdefault("reply_to_message", root)
        return self.push_message(self.message(forum, text, message_thread_id=thread_id,
                                              is_topic_message=True, **fields))

    def push_media(self, kind: str, content: bytes = b"fake-bytes", chat_id: int = 1001,
                   caption: str | None = None, **fields: Any) -> dict[str, Any]:
        """A photo, document, voice or sticker message whose file getFile can fetch."""
        f = self.register_file(content, file_path=f"{kind}s/file_{len(self.files) + 1}")
        if caption is not None:
            fields["caption"] = caption
        return self.push_message(self.message(self.chat(chat_id), **{kind: self._media(kind, f)},
                                              **fields))

    def push_edited(self, message: dict[str, Any], text: str) -> dict[str, Any]:
        edited = {k: v for k, v in message.items() if k != "entities"}
        edited.update(text=text, edit_date=int(time.time()))
        if entities := detect_entities(text):
            edited["entities"] = entities
        return self.push_message(edited, "edited_message")

    def push_migration(self, group_id: int, supergroup_id: int) -> list[dict[str, Any]]:
        """A group became a supergroup: Telegram posts a service message in each chat,
        and sending to the old id then fails with migrate_to_chat_id."""
        self._migrated[group_id] = supergroup_id
        old = self.message(self.chat(group_id), migrate_to_chat_id=supergroup_id)
        new = self.message(self.chat(supergroup_id), migrate_from_chat_id=group_id)
        return [self.push_message(old), self.push_message(new)]

    async def deliver_webhook(self) -> list[int]:
        """POST pending updates to the webhook as Telegram does; 2xx confirms one."""
        assert self.webhook is not None, "no webhook set"
        secret = self.webhook.get("secret_token")
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        statuses = []
        async with aiohttp.ClientSession() as http:
            for update in list(self.updates):
                async with http.post(self.webhook["url"], json=update, headers=headers) as resp:
                    statuses.append(resp.status)
                if resp.status >= 300:  # Telegram retries later, in order
                    self.webhook["last_error_message"] = f"Wrong response: {resp.status}"
                    break
                self.updates.remove(update)
        return statuses

    # -- HTTP plumbing -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(ApiError(401, "Unauthorized").body(), status=401)
        name = request.match_info["method"]  # Telegram's method names are case-insensitive
        params, uploads = await self._read(request)
        self.calls[name].append(Call(name, params, uploads, request.content_type))
        try:
            handler = self._handlers.get(name.lower())
            if handler is None:
                raise ApiError(404, "Not Found")
            fault = self._take_fault(name.lower())
            if fault is not None:
                await asyncio.sleep(fault.delay)
                if not fault.after_effect:
                    raise fault.error
            self._check_rate(name.lower(), params)
            result = await handler(params, uploads)
            if fault is not None:
                raise fault.error
            return web.json_response({"ok": True, "result": result})
        except ApiError as error:
            self.count_429 += error.code == 429
            return web.json_response(error.body(), status=error.code)

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        params: dict[str, Any] = {k: self._decode(k, v) for k, v in request.query.items()}
        uploads: dict[str, bytes] = {}
        if request.content_type == "application/json":  # other clients post JSON bodies
            params.update(await request.json())
        elif request.can_read_body:  # aiogram: urlencoded, or multipart when uploading
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    uploads[key] = value.file.read()
                else:
                    params[key] = self._decode(key, str(value))
        return params, uploads

    @staticmethod
    def _decode(key: str, value: str) -> Any:
        if key in _STRING_FIELDS:
            return value
        try:
            return json.loads(value)
        except ValueError:
            return value  # e.g. chat_id="@channelname"

    def _take_fault(self, method: str) -> _Fault | None:
        for key in (method, "*"):
            if queue := self._faults.get(key):
                fault = queue[0]
                fault.times -= 1
                if fault.times <= 0:
                    queue.popleft()
                return fault
        return None

    def _check_rate(self, method: str, params: dict[str, Any]) -> None:
        limits = self.rate_limits
        if limits is None or method not in _SEND_METHODS:
            return
        chat, now = params.get("chat_id"), self.clock()
        windows = [("bot", limits.per_bot), (("chat", chat), limits.per_chat)]
        if isinstance(chat, str) or (isinstance(chat, int) and chat < 0):
            windows.append((("group", chat), limits.per_group))
        wait = 0.0
        for key, (count, period) in windows:
            stamps = self._stamps[key]
            while stamps and stamps[0] <= now - period:
                stamps.popleft()
            if len(stamps) >= count:
                wait = max(wait, stamps[0] + period - now)
        if wait > 0:  # a refused send does not use up the window
            self.rate_limited += 1
            retry = max(1, math.ceil(wait))
            raise ApiError(429, f"Too Many Requests: retry after {retry}", retry_after=retry)
        for key, _ in windows:
            self._stamps[key].append(now)

    def _wake(self) -> None:
        if self._poller is not None and not self._poller.done():
            self._poller.set_result(None)

    def _new_message_id(self) -> int:
        self.next_message_id += 1
        return self.next_message_id - 1

    async def _download(self, request: web.Request) -> web.Response:
        found = [f for f in self.files.values() if f.file_path == request.match_info["path"]]
        if request.match_info["token"] != self.token or not found:
            return web.json_response(ApiError(404, "Not Found").body(), status=404)
        return web.Response(body=found[0].content, content_type="application/octet-stream")

    # -- Bot API methods ---------------------------------------------------------------

    async def _ok(self, params: dict[str, Any], uploads: dict[str, bytes]) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
        return {**self.bot_user, "can_join_groups": True, "supports_inline_queries": False,
                "can_read_all_group_messages": not self.privacy_mode}

    async def _get_updates(self, params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
        if self.webhook is not None:
            raise ApiError(409, WEBHOOK_CONFLICT)
        offset = int(params.get("offset", 0))
        limit = min(max(int(params.get("limit", 100)), 1), 100)
        timeout = max(int(params.get("timeout", 0)), 0)
        if "allowed_updates" in params:  # remembered across calls, as on Telegram
            self.allowed_updates = params["allowed_updates"] or None
        self.last_offset = offset
        if offset < 0:  # keep only the last -offset updates
            self.updates = self.updates[offset:]
        elif offset <= self.next_update_id + 10:  # tdlib ignores an offset "in the future"
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        if not self._pending(limit) and timeout > 0:
            # As in the Bot API server, a new long poll terminates the one in flight
            # (an immediate answer does not).
            if self._poller is not None and not self._poller.done():
                self._poller.set_exception(ApiError(409, POLL_CONFLICT))
            self._poller = waiter = asyncio.get_running_loop().create_future()
            async with self._changed:
                self._changed.notify_all()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                pass
            finally:
                if self._poller is waiter:
                    self._poller = None
        return self._pending(limit)

    def _pending(self, limit: int) -> list[dict[str, Any]]:
        if self.allowed_updates is not None:  # Telegram would not have queued the others
            allowed = set(self.allowed_updates)
            self.updates = [u for u in self.updates if set(u) - {"update_id"} <= allowed]
        return self.updates[:limit]

    async def _set_webhook(self, params: dict[str, Any], uploads: dict[str, bytes]) -> bool:
        if not params.get("url"):
            return await self._delete_webhook(params, uploads)
        if self._poller is not None and not self._poller.done():
            self._poller.set_exception(ApiError(409, "Conflict: terminated by setWebhook request"))
        await self._delete_webhook(params, uploads)
        self.webhook = dict(params)
        return True

    async def _delete_webhook(self, params: dict[str, Any], uploads: dict[str, bytes]) -> bool:
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = None
        return True

    async def _get_webhook_info(self, params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
        hook = self.webhook or {}
        info = {"url": hook.get("url", ""), "has_custom_certificate": False,
                "pending_update_count": len(self.updates)}
        return info | {k: hook[k] for k in ("max_connections", "allowed_updates",
                                            "last_error_message") if k in hook}

    def _target_chat(self, params: dict[str, Any]) -> int | str:
        chat = params.get("chat_id")
        if chat is None or chat == "":
            raise _bad("chat_id is empty")
        if isinstance(chat, int) and chat in self._migrated:
            raise ApiError(400, "Bad Request: group chat was upgraded to a supergroup chat",
                           migrate_to_chat_id=self._migrated[chat])
        return chat if isinstance(chat, str) else int(chat)

    def _format(self, text: str, params: dict[str, Any], limit: int,
                what: str) -> tuple[str, list[Any]]:
        mode = str(params.get("parse_mode") or "").lower()
        if mode == "html":
            try:
                plain, entities = parse_html(text, strict_ampersand=self.strict_ampersand)
            except ValueError as error:
                raise _bad(f"can't parse entities: {error}") from None
        elif mode in ("", "markdown", "markdownv2"):  # Markdown is passed through unchecked
            plain, entities = text, list(params.get("entities") or [])
        else:
            raise _bad("unsupported parse_mode")
        if utf16_len(plain) > limit:
            raise _bad(f"{what} is too long")
        return plain, entities

    def _outgoing(self, method: str, chat: int | str, params: dict[str, Any],
                  **content: Any) -> SentMessage:
        reply = params.get("reply_parameters")
        if reply is None and "reply_to_message_id" in params:  # the deprecated form
            reply = {"message_id": params["reply_to_message_id"]}
        where = self.chat(chat) if isinstance(chat, int) else {
            "id": -1009999999999, "type": "channel", "username": chat.lstrip("@")}
        msg: dict[str, Any] = {"message_id": self._new_message_id(), "date": int(time.time()),
                               "chat": where, "from": self.bot_user,
                               **{k: v for k, v in content.items() if v}}
        if reply is not None:
            target = self._messages.get((chat, int(reply["message_id"])))
            if target is not None:
                msg["reply_to_message"] = target
            elif not reply.get("allow_sending_without_reply"):
                raise _bad("message to be replied not found")
        if thread := params.get("message_thread_id"):
            msg.update(message_thread_id=thread, is_topic_message=True)
        self._messages[(chat, msg["message_id"])] = msg
        text = params.get("text", params.get("caption"))
        return SentMessage(method, chat, msg["message_id"], text, params.get("parse_mode"),
                           reply, thread, params, msg)

    async def _record(self, record: SentMessage, into: list[SentMessage]) -> None:
        into.append(record)
        async with self._changed:
            self._changed.notify_all()

    async def _send_message(self, params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
        chat = self._target_chat(params)
        plain, entities = self._format(str(params.get("text", "")), params, TEXT_LIMIT, "message")
        if not plain.strip():
            raise _bad("message text is empty")
        record = self._outgoing("sendMessage", chat, params, text=plain, entities=entities)
        await self._record(record, self.sent)
        return record.message

    async def _edit_message_text(self, params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
        if "inline_message_id" in params:
            return True
        chat = self._target_chat(params)
        msg = self._messages.get((chat, int(params.get("message_id", 0))))
        if msg is None:
            raise _bad("message to edit not found")
        if msg.get("from", {}).get("id") != self.bot_user["id"]:
            raise _bad("message can't be edited")
        plain, entities = self._format(str(params.get("text", "")), params, TEXT_LIMIT, "message")
        if not plain.strip():
            raise _bad("message text is empty")
        if (msg.get("text"), msg.get("entities", [])) == (plain, entities):
            raise ApiError(400, NOT_MODIFIED)  # streaming edits hit this all the time
        msg.pop("entities", None)
        msg.update(text=plain, edit_date=int(time.time()), **({"entities": entities}
                                                                if entities else {}))
        await self._record(SentMessage(
            "editMessageText", chat, msg["message_id"], params.get("text"),
            params.get("parse_mode"), None, msg.get("message_thread_id"), params, dict(msg)),
            self.edits)
        return msg

    @staticmethod
    def _media(kind: str, f: FakeFile) -> Any:
        obj = {"file_id": f.file_id, "file_unique_id": f.file_unique_id,
               "file_size": len(f.content)}
        return {"photo": [{**obj, "width": 320, "height": 240}],
                "document": {**obj, "file_name": "file.bin"},
                "voice": {**obj, "duration": 3, "mime_type": "audio/ogg"},
                "sticker": {**obj, "type": "regular", "width": 512, "height": 512,
                            "is_animated": False, "is_video": False, "emoji": "🙂"}}[kind]

    def _media_sender(self, kind: str) -> Handler:
        async def send(params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
            chat = self._target_chat(params)
            ref, data = str(params.get(kind, "")), None
            if ref.startswith("attach://"):  # aiogram uploads under a random field name
                data = uploads.get(ref.removeprefix("attach://"))
                if data is None:
                    raise _bad(f"file must be non-empty: {kind}")
                f = self.register_file(data, file_path=f"{kind}s/file_{len(self.files) + 1}")
            elif ref in self.files:
                f = self.files[ref]
            elif ref.startswith(("http://", "https://")):
                f = self.register_file(b"", file_path=f"{kind}s/url_{len(self.files) + 1}")
            else:
                raise _bad("wrong file identifier/HTTP URL specified")
            caption, entities = self._format(str(params.get("caption", "")), params,
                                             CAPTION_LIMIT, "message caption")
            record = self._outgoing(f"send{kind.title()}", chat, params, caption=caption,
                                    caption_entities=entities, **{kind: self._media(kind, f)})
            record.upload = data
            await self._record(record, self.sent)
            return record.message
        return send

    async def _get_file(self, params: dict[str, Any], uploads: dict[str, bytes]) -> Any:
        f = self.files.get(str(params.get("file_id", "")))
        if f is None:
            raise _bad("invalid file_id")
        if len(f.content) > 20 * 1024 * 1024:  # the cloud Bot API's download limit
            raise _bad("file is too big")
        return {"file_id": f.file_id, "file_unique_id": f.file_unique_id,
                "file_size": len(f.content), "file_path": f.file_path}


@contextlib.asynccontextmanager
async def start_fake_telegram(token: str = DEFAULT_TOKEN,
                              **kwargs: Any) -> AsyncIterator[FakeTelegram]:
    """Run a FakeTelegram on 127.0.0.1 (random free port) for the block's duration."""
    fake = FakeTelegram(token, **kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture(name="fake_telegram")
async def fake_telegram_fixture() -> AsyncIterator[FakeTelegram]:
    """The ``fake_telegram`` fixture. Import this name into a test module: a test
    parameter then does not shadow the import (ruff F811)."""
    async with start_fake_telegram() as fake:
        yield fake


fake_telegram = fake_telegram_fixture  # the same fixture, importable under its own name
