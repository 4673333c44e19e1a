"""Real platform events (built with the fakes' helpers) that the fuzz tests break.

Each template is realistic and rich (entities, files, mentions, threads, attachments,
encodings) so that a few mutations reach deep into a normalizer.
"""

from __future__ import annotations

from typing import Any

from tests.fakes import mailmessages as mm
from tests.fakes import teams as teams_fakes
from tests.fakes.slack import app_mention_event, event_callback, message_event

__all__ = ["EMAIL_TABLE", "MAIL_TEMPLATES", "SERVICE_URL", "SLACK_EVENTS", "TEAMS_ACTIVITIES", "TG_UPDATES",
           "teams_templates"]

SERVICE_URL = "https://smba.trafficmanager.net/amer/"

# -- Telegram: Bot API update JSON ----------------------------------------------------------

_ALICE = {"id": 1001, "is_bot": False, "first_name": "Alice", "last_name": "Liddell", "username": "alice"}
_FORUM = {"id": -1001234567890, "type": "supergroup", "title": "Group", "is_forum": True}
TG_MESSAGE: dict[str, Any] = {
    "message_id": 7, "date": 1700000000, "chat": _FORUM, "from": _ALICE,
    "message_thread_id": 3, "is_topic_message": True,
    "text": "@soulgate_bot hi /help@soulgate_bot see https://example.org `x` 😀 end",
    "entities": [
        {"type": "mention", "offset": 0, "length": 13},
        {"type": "bot_command", "offset": 17, "length": 19},
        {"type": "url", "offset": 41, "length": 19},
        {"type": "code", "offset": 61, "length": 3},
        {"type": "pre", "offset": 61, "length": 3, "language": "py"},
        {"type": "text_mention", "offset": 14, "length": 2, "user": {**_ALICE, "id": 4242}},
        {"type": "text_link", "offset": 37, "length": 3, "url": "https://example.org/x"},
        {"type": "blockquote", "offset": 0, "length": 16},
    ],
    "reply_to_message": {"message_id": 5, "date": 1700000000, "chat": _FORUM, "text": "earlier",
                         "from": {"id": 4242, "is_bot": True, "first_name": "Soul", "username": "soulgate_bot"}},
    "quote": {"text": "earl", "position": 0},
    "photo": [{"file_id": "p1", "file_unique_id": "u1", "width": 90, "height": 90, "file_size": 1000}],
    "document": {"file_id": "d1", "file_unique_id": "u2", "file_name": "a.pdf", "mime_type": "application/pdf"},
    "voice": {"file_id": "v1", "file_unique_id": "u3", "duration": 2},
    "animation": {"file_id": "a1", "file_unique_id": "u4", "width": 1, "height": 1, "duration": 1},
    "sticker": {"file_id": "s1", "file_unique_id": "u5", "type": "regular", "width": 1, "height": 1,
                "is_animated": False, "is_video": True},
}
TG_UPDATES: list[dict[str, Any]] = [
    {"update_id": 100, "message": TG_MESSAGE},
    {"update_id": 101, "message": {"message_id": 8, "date": 1700000000, "from": _ALICE,
                                   "chat": {"id": 1001, "type": "private", "first_name": "Alice"},
                                   "caption": "a caption", "caption_entities": [
                                       {"type": "mention", "offset": 2, "length": 7}]}},
    {"update_id": 102, "edited_message": {**TG_MESSAGE, "edit_date": 1700000100}},
    {"update_id": 103, "channel_post": {"message_id": 9, "date": 1700000000, "text": "news",
                                        "chat": {"id": -1009, "type": "channel", "title": "News",
                                                 "username": "news"},
                                        "sender_chat": {"id": -1009, "type": "channel", "title": "News"}}},
]

# -- Slack: Events API payloads --------------------------------------------------------------

_FILE = {"id": "F1", "name": "a.png", "mimetype": "image/png", "size": 10,
         "url_private": "https://files.slack.com/a"}
SLACK_EVENTS: list[dict[str, Any]] = [
    event_callback(message_event(
        "hi <@U0BOT> <@U2|bob> <#C1|general> <https://x.org|label> <!here> &gt; quoted &amp;",
        ts="1700000000.000100", files=[_FILE], user_profile={"display_name": "Al", "name": "al"})),
    event_callback(app_mention_event(ts="1700000000.000200", thread_ts="1700000000.000100"),
                   event_id="Ev0MENTION"),
    event_callback(message_event("dm", channel="D0DM", ts="1700000000.000300"), event_id="Ev0DM"),
]

# -- Teams: Bot Framework activities ---------------------------------------------------------


def teams_templates(service_url: str) -> list[dict[str, Any]]:
    att: list[dict[str, Any]] = [
        {"contentType": "image/png", "contentUrl": f"{service_url}v3/attachments/1", "name": "i.png"},
        {"contentType": "application/vnd.microsoft.teams.file.download.info", "name": "a.pdf",
         "content": {"downloadUrl": "https://x.sharepoint.com/a", "fileType": "pdf"}},
        {"contentType": "reference", "contentUrl": "https://x.sharepoint.com/b", "name": "b.docx"},
        {"contentType": "text/html", "content": '<p><img src="https://graph.microsoft.com/i/1"></p>'},
    ]
    return [
        teams_fakes.personal_message("hello **there**", service_url=service_url, attachments=att),
        teams_fakes.channel_message("<at>Soulgate</at> hi", service_url=service_url, thread_root_id="17"),
        teams_fakes.group_chat_message("<at>Soulgate</at> group", service_url=service_url, chat_name="G"),
        teams_fakes.conversation_update(service_url=service_url, conversation_type="channel"),
    ]


TEAMS_ACTIVITIES = teams_templates(SERVICE_URL)

# -- email: the account table and raw RFC 5322 messages -----------------------------------------

EMAIL_TABLE: dict[str, Any] = {
    "address": "bot@example.org", "allowed_senders": ["example.org", "alice@example.com"],
    "trusted_authserv_id": "mx.example.org", "max_attachments": 2, "max_attachment_bytes": 64,
    "imap": {"host": "127.0.0.1", "port": 1, "tls": "none", "user": "bot", "password": "pw"},
    "smtp": {"host": "127.0.0.1", "port": 1, "tls": "none"},
}
_AUTH = "mx.example.org; dmarc=pass header.from=example.org; dkim=pass header.d=example.org"
MAIL_TEMPLATES: list[bytes] = [
    mm.plain_text_message("Hello\n\nOn Mon, Bob wrote:\n> quoted\n-- \nsig\n", subject="Re: x",
                          message_id="<t1@example.org>", in_reply_to="<p@example.org>",
                          references="<r@example.org> <p@example.org>", reply_to="Al <al@example.org>"),
    mm.alternative_message(message_id="<t2@example.org>"),
    mm.html_only_message(message_id="<t3@example.org>"),
    mm.attachment_message(filename="Grüße.pdf", message_id="<t4@example.org>"),
    mm.encoded_words_message(message_id="<t5@example.org>"),
    mm.malformed_message("wrong_boundary", message_id="<t6@example.org>"),
    mm.malformed_message("bad_headers", message_id="<t7@example.org>"),
    b"Authentication-Results: " + _AUTH.encode() + b"\r\n" + mm.plain_text_message(message_id="<t8@example.org>"),
]
