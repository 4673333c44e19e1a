"""The Telegram adapter's pure parts: Markdown → HTML chunks, update → envelope, errors, config.

HTML is checked with the fake server's copy of Telegram's own entity parser, so
"Telegram would accept this" is tested, not assumed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import SendMessage
from aiogram.types import Update
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.telegram import TelegramConfig
from adapters.telegram.normalize import BotIdentity, normalize
from adapters.telegram.render import markdown_to_html, render_chunks, visible_text
from adapters.telegram.sending import delivery_error, is_parse_error, rate_limits_for
from gateway import OutcomeUnknown, PermanentDeliveryError, RetryAfter, TransientDeliveryError, utf16_len
from gateway.config import format_validation_error
from tests.fakes.telegram import parse_html

ME = BotIdentity(id=123456, username="soulgate_bot")


def accepted(html: str) -> str:
    """The visible text Telegram makes of ``html``; fails the test if Telegram would refuse it."""
    plain, _ = parse_html(html, strict_ampersand=True)
    return plain


# -- rendering -----------------------------------------------------------------------------


def test_markdown_becomes_supported_html_with_escaping() -> None:
    html = markdown_to_html(
        "# Plan\n\n**bold** _it_ ~~no~~ `a<b` & <script>x</script> [site](https://e.com/?a=1&b=2)\n\n"
        "- one\n- two\n\n> said\n\n```py\nif a < b: pass\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    )
    assert "<b>Plan</b>" in html and "<b>bold</b>" in html and "<i>it</i>" in html
    assert "<s>no</s>" in html and "<code>a&lt;b</code>" in html
    assert "&amp; &lt;script&gt;x&lt;/script&gt;" in html  # raw HTML in an answer stays text
    assert '<a href="https://e.com/?a=1&amp;b=2">site</a>' in html
    assert "• one\n• two" in html and "<blockquote>said</blockquote>" in html
    assert '<pre><code class="language-py">if a &lt; b: pass</code></pre>' in html
    assert "<pre>a | b\n--+--\n1 | 2</pre>" in html
    tags = {t.split()[0].strip("</>") for t in re.findall(r"</?[a-z][^>]*>", html)}
    assert tags <= {"b", "i", "s", "code", "pre", "a", "blockquote"}
    assert "<script>" in accepted(html)


def test_unsafe_links_and_nested_quotes_stay_plain() -> None:
    html = markdown_to_html("[x](javascript:alert(1)) [y](/relative) ![pic](ftp://h/p.png)\n\n> a\n> > b")
    assert "<a " not in html
    assert html.count("<blockquote>") == 1  # Telegram cannot nest quotes
    accepted(html)


def test_empty_rendering_falls_back_to_the_source() -> None:
    [chunk] = render_chunks("[](https://example.com)")
    assert visible_text(chunk.html).strip()
    accepted(chunk.html)


def test_long_text_splits_within_the_limit_without_breaking_code_or_emoji() -> None:
    code = "```js\n" + "\n".join(f"let x{i} = '😀 <{i}>';" for i in range(40)) + "\n```"
    text = "Intro 🎉 " * 30 + "\n\n" + code + "\n\n" + "Tail 👍 " * 30
    chunks = render_chunks(text, limit=400)
    assert len(chunks) > 3
    seen = ""
    for chunk in chunks:
        plain = accepted(chunk.html)
        assert utf16_len(plain) <= 400
        assert utf16_len(chunk.markdown) <= 400  # the plain-text fallback fits too
        seen += plain
        if "let x" in plain:
            assert "<pre><code" in chunk.html  # the cut code block was closed and reopened
    assert all(f"let x{i} = '😀 <{i}>';" in seen for i in range(40))
    assert seen.count("🎉") == 30 and seen.count("👍") == 30


_pieces = st.sampled_from([
    "word ", "😀", "**b** ", "_i_ ", "`c<d>` ", "a & b ", "<tag> ", "\n", "\n\n", "- item\n",
    "1. first\n", "> quote\n", "```\ncode & <x>\n```\n", "```py\n", "[l](https://x.y/?a&b) ",
    "| a | b |\n|---|---|\n| 1 | 2 |\n", "# head\n", "~~s~~ ", "\\", "*", "_", "ß", "𝄞",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=120))
def test_any_answer_renders_to_chunks_telegram_accepts(parts: list[str]) -> None:
    text = "".join(parts)
    chunks = render_chunks(text, limit=120)
    if text.strip():
        assert chunks
    for chunk in chunks:
        plain = accepted(chunk.html)
        assert plain.strip() and utf16_len(plain) <= 120


# -- updates → envelopes -------------------------------------------------------------------


def update(message: dict[str, Any], update_id: int = 7, kind: str = "message") -> Update:
    return Update.model_validate({"update_id": update_id, kind: message})


def group_message(text: str, entities: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"message_id": 5, "date": 0, "chat": {"id": -100, "type": "supergroup", "title": "G"},
            "from": {"id": 42, "is_bot": False, "first_name": "Bo"}, "text": text,
            "entities": entities, **extra}


def test_mention_after_emoji_is_found_by_utf16_offset_and_removed() -> None:
    text = "😀😀 hey @soulgate_bot what now"
    msg = group_message(text, [{"type": "mention", "offset": 9, "length": 13}])  # UTF-16 units
    env = normalize(update(msg), {}, account="main", me=ME)
    assert env is not None and env.addressed
    assert env.text == "😀😀 hey what now"
    assert (env.external_id, env.alt_ids) == ("update:7", ("msg:-100:5",))
    assert env.reply_to.data == {"chat_id": -100, "message_id": 5, "thread_id": None,
                                 "chat_type": "supergroup"}


def test_leading_mention_and_punctuation_go() -> None:
    msg = group_message("@SoulGate_Bot, summarise", [{"type": "mention", "offset": 0, "length": 13}])
    env = normalize(update(msg), {}, account="main", me=ME)
    assert env is not None and env.addressed and env.text == "summarise"


def test_commands_for_us_lose_our_name_and_commands_for_others_are_dropped() -> None:
    ours = group_message("/help@soulgate_bot now", [{"type": "bot_command", "offset": 0, "length": 18}])
    env = normalize(update(ours), {}, account="main", me=ME)
    assert env is not None and env.addressed and env.text == "/help now"
    theirs = group_message("/help@other_bot", [{"type": "bot_command", "offset": 0, "length": 15}])
    assert normalize(update(theirs), {}, account="main", me=ME) is None
    bare = group_message("/help", [{"type": "bot_command", "offset": 0, "length": 5}])
    env = normalize(update(bare), {}, account="main", me=ME)
    assert env is not None and not env.addressed  # which bot? only its own name says so


def test_text_mention_of_the_bot_and_reply_to_the_bot_address_it() -> None:
    tm = group_message("hey bot", [{"type": "text_mention", "offset": 4, "length": 3,
                                    "user": {"id": 123456, "is_bot": True, "first_name": "S"}}])
    env = normalize(update(tm), {}, account="main", me=ME)
    assert env is not None and env.addressed
    bot_said = {"message_id": 4, "date": 0, "chat": {"id": -100, "type": "supergroup"},
                "from": {"id": 123456, "is_bot": True, "first_name": "S"}, "text": "earlier"}
    env = normalize(update(group_message("more?", [], reply_to_message=bot_said)), {},
                    account="main", me=ME)
    assert env is not None and env.addressed
    assert env.segments[0].kind == "quote" and env.segments[0].value == "earlier"


def test_topic_root_from_the_bot_is_not_a_reply_to_it() -> None:
    root = {"message_id": 9, "date": 0, "chat": {"id": -100, "type": "supergroup", "is_forum": True},
            "from": {"id": 123456, "is_bot": True, "first_name": "S"},
            "forum_topic_created": {"name": "T", "icon_color": 1}}
    msg = group_message("in the topic", [], message_thread_id=9, is_topic_message=True,
                        reply_to_message=root)
    env = normalize(update(msg), {}, account="main", me=ME)
    assert env is not None and not env.addressed and env.thread == "9" and env.segments == ()
    # a reply thread in a plain group (no is_topic_message) is not a topic
    msg = group_message("not a topic", [], message_thread_id=9)
    env = normalize(update(msg), {}, account="main", me=ME)
    assert env is not None and env.thread is None


def test_media_caption_sender_chat_and_edits() -> None:
    msg = {"message_id": 3, "date": 0, "chat": {"id": -200, "type": "channel", "title": "News"},
           "sender_chat": {"id": -200, "type": "channel", "title": "News"},
           "caption": "see", "document": {"file_id": "F1", "file_unique_id": "U1", "file_size": 9,
                                          "file_name": "a.pdf", "mime_type": "application/pdf"}}
    env = normalize(update(msg, kind="channel_post"), {}, account="main", me=ME)
    assert env is not None and env.text == "see" and env.conversation.kind == "channel"
    assert env.sender.id == "-200" and env.sender.display_name == "News" and not env.addressed
    att = env.segments[0].attachment
    assert att is not None and (att.name, att.mime, att.size, att.ref) == ("a.pdf", "application/pdf", 9, "F1")
    edited = normalize(update(dict(msg, edit_date=99), kind="edited_channel_post"), {},
                       account="main", me=ME)
    assert edited is not None and edited.alt_ids == ("edit:-200:3:99",)  # not the original's key


# -- sending -------------------------------------------------------------------------------


def test_rate_limits_most_specific_first() -> None:
    keys = [(r.key, r.interval, r.burst) for r in rate_limits_for("42", -100)]
    assert keys == [("telegram:42:chat:-100", 1.05, 1), ("telegram:42:group:-100", 60 / 19, 1),
                    ("telegram:42:bot", 1 / 28, 1)]
    assert [r.key for r in rate_limits_for("42", 7)] == ["telegram:42:chat:7", "telegram:42:bot"]


def test_errors_map_to_delivery_decisions() -> None:
    method = SendMessage(chat_id=1, text="x")
    flood = delivery_error(TelegramRetryAfter(method, "flood", 7))
    assert isinstance(flood, RetryAfter) and flood.seconds == 7
    assert isinstance(delivery_error(TelegramServerError(method, "oops")), TransientDeliveryError)
    assert isinstance(delivery_error(TelegramForbiddenError(method, "blocked")), PermanentDeliveryError)
    assert isinstance(delivery_error(TelegramNetworkError(method, "Request timeout error")), OutcomeUnknown)
    bad = TelegramBadRequest(method, "Bad Request: can't parse entities: x")
    assert is_parse_error(bad) and isinstance(delivery_error(bad), PermanentDeliveryError)


# -- config --------------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValidationError) as info:
        TelegramConfig.model_validate({"token": "secret-but-malformed"})
    problems = format_validation_error(info.value, "channels.telegram.main")
    assert problems[0].startswith("channels.telegram.main.token: ")
    assert "secret-but-malformed" not in "".join(problems)  # what the gateway prints
    with pytest.raises(ValidationError, match="webhook_url"):
        TelegramConfig.model_validate({"token": "1:abc", "mode": "webhook"})
    with pytest.raises(ValidationError, match="webhook_secret"):
        TelegramConfig.model_validate({"token": "1:abc", "webhook_secret": "no spaces allowed"})
    with pytest.raises(ValidationError, match="extra"):
        TelegramConfig.model_validate({"token": "1:abc", "tokne": "typo"})
    ok = TelegramConfig.model_validate({"token": "1:abc", "api_base": "http://127.0.0.1:1/"})
    assert ok.api_base == "http://127.0.0.1:1" and ok.bot_id == "1" and ok.mode == "polling"
    assert ok.delivery_policy == "never_lost" and ok.edited_messages == "ignore"
