"""Everything that speaks SQL: the pool, embedded Postgres, migrations and repositories."""

from .audit import RUN_FIELDS, AuditRepo
from .conversations import ConversationRepo
from .database import (
    Database,
    DatabaseUnavailable,
    connection_trouble,
    create_database,
    drop_database,
    hide_password,
    start_embedded,
)
from .inbox import INBOX_CHANNEL, ClaimedTurn, InboxRepo, LostClaim
from .memories import MemoryRepo
from .notify import RELOAD_CHANNEL, listen_forever
from .outbox import OUTBOX_CHANNEL, OutboxItem, OutboxRepo, PendingChunk
from .planner_stats import analyze_stale_queue_tables, keep_queue_stats_fresh
from .ratelimit import RateLimiter
from .replies import HTTP_REPLY_CHANNEL, RepliesRepo, TurnProgress
from .runs import RunsRepo
from .state import StateRepo, keep_state_pruned, leadership, prune_expired_state
from .turns import TurnRecord, commit_turn

__all__ = [
    "HTTP_REPLY_CHANNEL",
    "INBOX_CHANNEL",
    "OUTBOX_CHANNEL",
    "RELOAD_CHANNEL",
    "RUN_FIELDS",
    "AuditRepo",
    "ClaimedTurn",
    "ConversationRepo",
    "Database",
    "DatabaseUnavailable",
    "InboxRepo",
    "LostClaim",
    "MemoryRepo",
    "OutboxItem",
    "OutboxRepo",
    "PendingChunk",
    "RateLimiter",
    "RepliesRepo",
    "RunsRepo",
    "StateRepo",
    "Store",
    "TurnProgress",
    "TurnRecord",
    "analyze_stale_queue_tables",
    "commit_turn",
    "connection_trouble",
    "create_database",
    "drop_database",
    "hide_password",
    "keep_queue_stats_fresh",
    "keep_state_pruned",
    "leadership",
    "listen_forever",
    "prune_expired_state",
    "start_embedded",
]


class Store:
    """All repositories over one database, as the gateway uses them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inbox = InboxRepo(db)
        self.outbox = OutboxRepo(db)
        self.conversations = ConversationRepo(db)
        self.audit = AuditRepo(db)
        self.rates = RateLimiter(db)
        self.state = StateRepo(db)
        self.memories = MemoryRepo(db)
        self.runs = RunsRepo(db)
        self.replies = RepliesRepo(db)
