"""docs/hooks.md documents exactly the hooks of gateway/hookspecs.py, and its examples load.

For every hook: a ``## `name` `` section whose first Python block is the exact
signature, whose "Sync or async" and "First result wins" lines match the spec,
and whose example block registers as a valid plugin. No ``soulgate_*`` name in
the plugin docs may look like a hook that does not exist.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import pytest

from gateway import hookspecs
from gateway.plugins import PluginManager
from gateway.testing import plugin as kit

DOCS = Path(__file__).resolve().parent.parent / "docs"
HOOKS_MD = DOCS / "hooks.md"
# soulgate_* names in the docs that are not hooks: metrics, fixtures, example packages
NOT_HOOKS = {
    *kit.__all__,  # the test kit's fixtures and helpers
    "soulgate_plugin_errors",
    "soulgate_myplugin", "soulgate_greeter", "soulgate_turns", "soulgate_admitted",
    "soulgate_inbund",  # hooks.md's example of a misspelt hook
}
_SECTION = re.compile(r"^## `([a-z_]+)`\s*$", re.M)
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _sections() -> dict[str, str]:
    text = HOOKS_MD.read_text(encoding="utf-8")
    marks = list(_SECTION.finditer(text))
    return {m.group(1): text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
            for i, m in enumerate(marks)}


def _signature(name: str) -> str:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {name}({params}) -> {sig.return_annotation}"


def _spec_says_async(name: str) -> bool:
    return "Sync or async" in (inspect.getdoc(getattr(hookspecs, name)) or "")


def _field(section: str, label: str) -> str:
    m = re.search(rf"^- \*\*{re.escape(label)}:\*\* (.+)$", section, re.M)
    assert m, f"no '{label}' line"
    return m.group(1).strip()


def test_every_hook_has_a_section_and_no_section_names_a_missing_hook() -> None:
    documented = list(_sections())
    assert len(documented) == len(set(documented)), "a hook is documented twice"
    assert set(documented) - set(hookspecs.HOOK_NAMES) == set(), "docs name hooks that do not exist"
    assert set(hookspecs.HOOK_NAMES) - set(documented) == set(), "hooks without documentation"


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_section_matches_the_spec(name: str) -> None:
    section = _sections().get(name)
    assert section is not None, f"{name} is not documented in docs/hooks.md"
    blocks = _BLOCK.findall(section)
    assert blocks, f"{name}: no signature block"
    assert blocks[0].strip() == _signature(name), f"{name}: signature differs from gateway/hookspecs.py"
    expected = "sync or async" if _spec_says_async(name) else "sync only"
    assert _field(section, "Sync or async") == expected, name
    firstresult = getattr(hookspecs, name).soulgate_spec["firstresult"]
    assert _field(section, "First result wins") == ("yes" if firstresult else "no"), name
    for label in ("When", "Result"):
        assert _field(section, label), f"{name}: '{label}' is empty"


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_section_example_is_a_valid_plugin(name: str) -> None:
    blocks = _BLOCK.findall(_sections()[name])
    assert len(blocks) >= 2, f"{name}: no example"
    module = types.ModuleType(f"hooks_md_{name}")
    exec(compile(blocks[1], f"docs/hooks.md ({name})", "exec"), module.__dict__)
    pm = PluginManager(trace=False)
    pm.register(module, f"example_{name}")
    info = pm.infos[f"example_{name}"]
    assert (info.state, info.error) == ("active", None)
    assert name in info.hooks


def test_no_unknown_hook_names_anywhere_in_the_plugin_docs() -> None:
    for doc in (HOOKS_MD, DOCS / "plugins.md"):
        if not doc.exists():
            continue
        names = set(re.findall(r"\bsoulgate_[a-z_]+\b", doc.read_text(encoding="utf-8")))
        unknown = names - set(hookspecs.HOOK_NAMES) - NOT_HOOKS
        assert not unknown, f"{doc.name} names hooks that do not exist: {sorted(unknown)}"


def test_hook_docs_test_catches_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above are not vacuous: a missing section and a wrong signature are both seen."""
    text = HOOKS_MD.read_text(encoding="utf-8")
    broken = tmp_path / "hooks.md"
    broken.write_text(text.replace("## `soulgate_shutdown`", "## `soulgate_shutdwn`").replace(
        "def soulgate_reply(reply: Reply,", "def soulgate_reply(reply: str,"))
    monkeypatch.setattr(sys.modules[__name__], "HOOKS_MD", broken)
    with pytest.raises(AssertionError, match="do not exist"):
        test_every_hook_has_a_section_and_no_section_names_a_missing_hook()
    with pytest.raises(AssertionError, match="signature differs"):
        test_section_matches_the_spec("soulgate_reply")
