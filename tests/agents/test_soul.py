"""SOUL files: parsing, validation with file:line, the directory form, `soulgate check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.agent import bounded_history
from agents.soul import check_soul, load_soul_dir, parse_soul
from gateway import HistoryEntry
from gateway.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
P = Path("soul/x.md")


def problems(text: str) -> list[str]:
    result = parse_soul(text, P, default_name="x")
    assert isinstance(result, list), f"expected problems, got {result}"
    return [str(p) for p in result]


def test_full_front_matter() -> None:
    soul = parse_soul(
        "---\nname: helper\ndescription: Helps.\nmodel: fast\nfallbacks: [openai/gpt-4o-mini, slow]\n"
        "temperature: 0.2\nmax_tokens: 300\nskills: [memory]\nmemory:\n  history_turns: 3\n  recall: 0\n"
        "max_steps: 2\n---\n\nYou are Helper.\n", P, default_name="x")
    assert not isinstance(soul, list)
    assert (soul.name, soul.description, soul.temperature, soul.max_tokens) == ("helper", "Helps.", 0.2, 300)
    assert soul.chain() == ["fast", "openai/gpt-4o-mini", "slow"]
    assert soul.memory.history_turns == 3 and soul.memory.recall == 0 and soul.memory.history_tokens == 4000
    assert soul.persona == "You are Helper." and soul.max_steps == 2 and soul.skills == ("memory",)


def test_no_front_matter_is_a_plain_persona_using_the_default_model() -> None:
    soul = parse_soul("You are terse.", P, default_name="terse")
    assert not isinstance(soul, list)
    assert soul.name == "terse" and soul.chain() == ["default"] and soul.persona == "You are terse."


@pytest.mark.parametrize(("text", "expected"), [
    ("---\nname: x\nmodel: [open\nskills: []\n---\nhi", "soul/x.md:4: invalid YAML in front matter"),
    ("---\nname: x\ncolour: red\n---\nhi", "soul/x.md:3: colour: unknown key"),
    ("---\nmemory:\n  recal: 2\n---\nhi", "soul/x.md:3: memory.recal: unknown key"),
    ("---\ntemperature: 9\n---\nhi", "soul/x.md:2: temperature: Input should be less than or equal to 2"),
    ("---\nskills:\n  - a\n  - [b]\n---\nhi", "soul/x.md:4: skills[1]: Input should be a valid string"),
    ("---\nname: x\n", "soul/x.md:1: front matter opened with '---' on line 1 is never closed"),
    ("---\n- a\n---\nhi", "soul/x.md:2: front matter must be a mapping"),
    ("---\nname: no spaces please\n---\nhi", "soul/x.md:2: name 'no spaces please'"),
    ("---\nname: x\n---\n\n", "soul/x.md:2: the persona (the Markdown after the front matter) is empty"),
])
def test_bad_files_name_file_and_line(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_aliases_and_skills_are_checked_against_config_and_plugins() -> None:
    soul = parse_soul("---\nmodel: fast\nfallbacks:\n  - groq/llama3\n  - slow\nskills: [memory, web]\n---\nhi",
                      P, default_name="x")
    assert not isinstance(soul, list)
    found = [str(p) for p in check_soul(soul, {"fast"}, {"memory", "remember"})]
    assert found == [
        "soul/x.md:5: fallbacks: unknown model alias 'slow' (configured [models]: fast; "
        "a litellm model string contains '/', e.g. openai/gpt-4o-mini)",
        "soul/x.md:6: skills: no plugin provides a tool or skill named 'web' (known: memory, remember)",
    ]
    no_model = parse_soul("hi", P, default_name="x")
    assert not isinstance(no_model, list)
    assert check_soul(no_model, set(), set()) == []  # nothing configured at all: the agent says so at run time
    assert "no 'model' given" in str(check_soul(no_model, {"fast"}, set())[0])


def test_directory_form_and_duplicates(tmp_path: Path) -> None:
    ws = tmp_path / "research"
    ws.mkdir()
    (ws / "SOUL.md").write_text("You are a researcher.\n")
    (ws / "AGENTS.md").write_text("Cite sources.\n")
    (ws / "USER.md").write_text("The user is a chemist.\n")
    (tmp_path / "README.md").write_text("not an agent")
    (tmp_path / "z.md").write_text("---\nname: research\n---\nimpostor\n")  # read after research/
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe broken")
    souls, errors = load_soul_dir(tmp_path)
    [soul] = souls.values()
    assert (soul.name, soul.agents_md, soul.user_md) == ("research", "Cite sources.", "The user is a chemist.")
    assert sorted(str(e) for e in errors) == [
        f"{tmp_path / 'bad.md'}:1: not UTF-8 text: invalid start byte",
        f"{tmp_path / 'z.md'}:2: agent 'research' is already defined in {ws / 'SOUL.md'}",
    ]
    _, missing = load_soul_dir(tmp_path / "nope")
    assert "does not exist" in str(missing[0])


def test_shipped_souls_are_valid() -> None:
    skills = {"memory", "remember", "recall", "forget"}
    souls, errors = load_soul_dir(REPO / "soul")
    assert errors == [] and {s.name for s in souls.values()} == {"assistant"}
    for soul in souls.values():
        assert check_soul(soul, {"default"}, skills) == []
    examples, errors = load_soul_dir(REPO / "soul" / "examples")
    assert errors == [] and {s.name for s in examples.values()} == {"translator", "researcher"}
    for soul in examples.values():
        assert check_soul(soul, {"default", "fast", "local"}, skills) == []
    researcher = next(s for s in examples.values() if s.name == "researcher")
    assert researcher.agents_md and researcher.user_md


def test_soulgate_check_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    souls = tmp_path / "souls"
    souls.mkdir()
    (souls / "assistant.md").write_text("---\nmodel: nope\nskills: [telepathy]\n---\nhi\n")
    (souls / "broken.md").write_text("---\nname: broken\nmodel: [x\n---\nhi\n")
    (souls / "extra.md").write_text("---\nname: extra\nmood: happy\n---\nhi\n")
    config = tmp_path / "soulgate.toml"
    config.write_text(f'[agents]\nsoul_dir = "{souls}"\nembedding_model = "emb"\n'
                      '[models.default]\nmodel = "openai/x"\n'
                      '[[routes]]\nchannel = "console"\nagent = "ghost"\n')
    assert cli_main(["-c", str(config), "check"]) == 1
    err = capsys.readouterr().err
    assert f"{souls / 'assistant.md'}:2: model: unknown model alias 'nope'" in err
    assert f"{souls / 'assistant.md'}:3: skills: no plugin provides a tool or skill named 'telepathy'" in err
    assert f"{souls / 'broken.md'}:4: invalid YAML" in err
    assert f"{souls / 'extra.md'}:3: mood: unknown key" in err
    assert "routes[0].agent: no SOUL file defines agent 'ghost'" in err
    assert "agents.embedding_model: unknown model alias 'emb'" in err
    (souls / "assistant.md").write_text("---\nskills: [memory]\n---\nhi\n")
    (souls / "broken.md").unlink()
    (souls / "extra.md").unlink()
    config.write_text(f'[agents]\nsoul_dir = "{souls}"\n[models.default]\nmodel = "openai/x"\n')
    assert cli_main(["-c", str(config), "check"]) == 0


def test_history_is_bounded_by_turns_and_tokens() -> None:
    history = []
    for i in range(6):
        history += [HistoryEntry("user", f"q{i} " + "x" * 40), HistoryEntry("assistant", f"a{i}")]
    history.append(HistoryEntry("assistant", "oops", {"error": True}))
    kept = bounded_history(history, turns=2, tokens=10_000)
    assert [m["content"][:2] for m in kept] == ["q4", "a4", "q5", "a5"]
    # 14 tokens a question, 4 an answer: 30 hold a5, q5 and a4, and a4 without its question goes
    kept = bounded_history(history, turns=10, tokens=30)
    assert [m["content"][:2] for m in kept] == ["q5", "a5"]
    assert bounded_history(history, turns=0, tokens=1000) == []


def test_check_without_a_soul_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")  # soul_dir not configured and absent: the built-in default agent answers
    assert cli_main(["-c", str(config), "check"]) == 0
    config.write_text('[agents]\nsoul_dir = "nowhere"\n')  # configured and absent: a mistake
    assert cli_main(["-c", str(config), "check"]) == 1
    assert f"{tmp_path / 'nowhere'}: SOUL directory does not exist" in capsys.readouterr().err
