"""``soulgate new-plugin NAME``: a new plugin package from the bundled template.

The template (``plugins/_template``) is a working plugin named ``myplugin``;
making a new one copies it and replaces that name everywhere (file contents
and paths). The copy is built in a temporary directory beside the target and
renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from .plugins import BUILTIN_PLUGINS

__all__ = ["PLACEHOLDER", "TemplateError", "render_template", "template_dir"]

PLACEHOLDER = "myplugin"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SKIP_DIRS = {"__pycache__", "build", "dist", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


class TemplateError(ValueError):
    """The name or the target directory is unusable; nothing was written."""


def template_dir() -> Path:
    return Path(str(resources.files("plugins") / "_template"))


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise TemplateError(
            f"plugin name {name!r} must be lower-case letters, digits or _ (max 32), starting with a "
            "letter: it becomes the command /NAME and part of the module soulgate_NAME"
        )
    if keyword.iskeyword(name):
        raise TemplateError(f"plugin name {name!r} is a Python keyword")
    taken = {m.rsplit(".", 1)[-1] for m in BUILTIN_PLUGINS}
    if name in taken:
        raise TemplateError(f"plugin name {name!r} is taken by a built-in plugin ({', '.join(sorted(taken))})")


def render_template(name: str, target: Path | None = None, *, source: Path | None = None) -> Path:
    """Create the package for plugin ``name`` in ``target`` (default ``./soulgate-<name>``)."""
    _check_name(name)
    source = source or template_dir()
    if not (source / "pyproject.toml").is_file():
        raise TemplateError(f"plugin template not found in {source}")
    target = Path(target) if target is not None else Path.cwd() / f"soulgate-{name}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TemplateError(f"{target} already exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".soulgate-new-", dir=target.parent))
    try:
        for src in sorted(source.rglob("*")):
            rel = src.relative_to(source)
            if any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
                continue
            dest = staging / str(rel).replace(PLACEHOLDER, name)
            if src.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif src.suffix != ".pyc":
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(src.read_text(encoding="utf-8").replace(PLACEHOLDER, name), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a package directory is not
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
