"""Long-term memory per user: /remember, /recall, /forget, recall into the prompt, FTS and pgvector."""

from __future__ import annotations

from pathlib import Path

from gateway.testing import running_gateway
from tests.fakes.llm import FakeLLM, Fault

from .conftest import agent_config, model, runs, write_soul

MEMORY_HEADING = "What you remember about this user"


def _system(fake: FakeLLM) -> str:
    return str(fake.requests_for("m-default")[-1].messages[0]["content"])


async def test_full_text_recall_commands_and_prompt(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant", "memory:\n  recall: 3")
    async with running_gateway(soulgate_database_url, config=agent_config(fake_llm, tmp_path)) as h:
        assert await h.ask("/recall") == "I don't remember anything about you yet. Teach me with `/remember <fact>`."
        assert "Remembered (`#1`)" in await h.ask("/remember I live in Lisbon, near the river")
        assert "Remembered (`#2`)" in await h.ask("/remember My favourite food is grilled sardines")
        assert "already remember" in await h.ask("/remember   I live in Lisbon,  near the river")
        await h.ask("Where do I live these days?")
        system = _system(fake_llm)
        assert MEMORY_HEADING in system and "Lisbon" in system and "sardines" not in system
        assert "sardines" in await h.ask("/recall food")
        assert "Nothing I remember matches" in await h.ask("/recall astronomy")
        # another person (same chat, other sender) has memories of their own
        assert "don't remember anything" in await h.ask("/recall", sender="user-2")
        await h.ask("Where do I live?", sender="user-2")
        assert MEMORY_HEADING not in _system(fake_llm)
        assert "Forgot 0 of 1" in await h.ask("/forget 1", sender="user-2")  # not theirs to delete
        assert "Forgot 1 memory" in await h.ask("/forget #1")
        assert "Lisbon" not in await h.ask("/recall")
        assert "Forgot everything" in await h.ask("/forget all")
        assert "don't remember anything" in await h.ask("/recall")
        await h.idle()
        assert await runs(h) != []  # the turns' chat calls; no embedding calls without an embedding model
        assert all(r["detail"]["kind"] == "chat" for r in await runs(h))


async def test_memory_commands_reject_bad_input(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant")
    async with running_gateway(soulgate_database_url, config=agent_config(fake_llm, tmp_path)) as h:
        assert (await h.ask("/remember")).startswith("Usage: `/remember")
        assert "at most 2000 characters" in await h.ask("/remember " + "x" * 2001)
        assert (await h.ask("/forget everything please")).startswith("Usage: `/forget")
        assert "don't remember anything" in await h.ask("/recall")


async def test_embedding_recall_with_pgvector(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant", "memory:\n  recall: 2\n  min_score: 0.3")
    models = {"default": model(fake_llm, "m-default"), "emb": model(fake_llm, "m-emb")}
    config = agent_config(fake_llm, tmp_path, models, agents={"soul_dir": str(tmp_path), "embedding_model": "emb"})
    async with running_gateway(soulgate_database_url, config=config) as h:
        await h.ask("/remember My cat is called Miso and sleeps on the piano")
        await h.ask("/remember I work as a nurse at the night shift")
        await h.ask("/remember I am allergic to peanuts")
        embedded = [r.input for r in fake_llm.requests_for("m-emb", path="/v1/embeddings")]
        assert embedded == [["My cat is called Miso and sleeps on the piano"],
                            ["I work as a nurse at the night shift"], ["I am allergic to peanuts"]]
        await h.ask("does my cat Miso still sleep on the piano?")
        system = _system(fake_llm)
        assert "Miso" in system and "peanuts" not in system and "nurse" not in system
        recalled = await h.ask("/recall piano cat")
        assert "embeddings (emb)" in recalled and "Miso" in recalled
        await h.idle()
        kinds = [(r["model"], r["detail"]["kind"], r["success"]) for r in await runs(h)]
        assert kinds.count(("emb", "embedding", True)) == 5  # 3 stores, 1 turn recall, 1 /recall
        assert ("default", "chat", True) in kinds


async def test_memories_stored_before_embeddings_are_backfilled(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant")
    async with running_gateway(soulgate_database_url, config=agent_config(fake_llm, tmp_path)) as h:
        await h.ask("/remember My sister Ana lives in Porto")
    models = {"default": model(fake_llm, "m-default"), "emb": model(fake_llm, "m-emb")}
    config = agent_config(fake_llm, tmp_path, models, agents={"soul_dir": str(tmp_path), "embedding_model": "emb"})
    async with running_gateway(soulgate_database_url, config=config) as h:
        reply = await h.ask("/recall sister Ana")
        assert "Porto" in reply and "embeddings (emb)" in reply
        [request] = fake_llm.requests_for("m-emb", path="/v1/embeddings")
        assert request.input == ["sister Ana", "My sister Ana lives in Porto"]  # query + backfill, one call
        await h.ask("/recall Porto")
        assert fake_llm.requests_for("m-emb", path="/v1/embeddings")[-1].input == ["Porto"]  # nothing left to backfill


async def test_embedding_model_down_falls_back_to_full_text(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant")
    models = {"default": model(fake_llm, "m-default"), "emb": model(fake_llm, "m-emb")}
    config = agent_config(fake_llm, tmp_path, models, agents={"soul_dir": str(tmp_path), "embedding_model": "emb"})
    fake_llm.fail("m-emb", Fault.server_error())
    async with running_gateway(soulgate_database_url, config=config) as h:
        assert "Remembered" in await h.ask("/remember My bike is a red Brompton")
        assert "Brompton" in await h.ask("/recall bike")
        await h.ask("tell me about my bike")
        assert "Brompton" in _system(fake_llm)
        await h.idle()
        failed = [r for r in await runs(h) if r["detail"]["kind"] == "embedding"]
        assert failed and all(not r["success"] and r["detail"]["reason"] == "server_error" for r in failed)
