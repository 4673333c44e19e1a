"""The ``soulgate`` command: run, chat, check, plugins, new-plugin, admin-token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from storage import DatabaseUnavailable

from .config import Config, load_config
from .errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("soulgate")


def _setup_logging(level: str, *, quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # its INFO lines are start-up noise


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _fail(problems: Sequence[str], code: int = 2) -> int:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return code


# -- run ---------------------------------------------------------------------------------


async def _run(config: Config, role: str) -> int:
    from .runtime import Gateway

    gw = Gateway(config, role=role)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reload_hook = getattr(gw, "reload", None)
    if reload_hook is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_hook()))
    try:
        await gw.start()
    except (ConfigError, DatabaseUnavailable) as exc:
        await gw.stop()
        problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        return _fail(problems)
    print(
        f"soulgate is running (admin: http://{config.admin.host}:{gw.admin_port}, "
        f"public: {'port ' + str(gw.public_port) if gw.public_port else 'off'}). Ctrl-C stops it.",
        file=sys.stderr, flush=True,
    )
    await stop.wait()
    log.info("stopping: finishing in-flight work")
    await gw.stop()
    return 0


# -- chat --------------------------------------------------------------------------------


async def _chat(config: Config) -> int:
    from adapters.console import ConsoleAdapter

    from .runtime import Gateway

    # The terminal conversation needs no channels, no listeners: only the pipeline.
    config = config.model_copy(update={
        "channels": {},
        "http": config.http.model_copy(update={"enabled": False}),
        "admin": config.admin.model_copy(update={"enabled": False}),
    })
    gw = Gateway(config)
    console = ConsoleAdapter(output=lambda text: print(text, flush=True))
    gw.add_adapter(console)
    try:
        await gw.start()
    except (ConfigError, DatabaseUnavailable) as exc:
        await gw.stop()
        return _fail(exc.problems if isinstance(exc, ConfigError) else [str(exc)])
    interactive = sys.stdin.isatty()
    if interactive:
        print("soulgate chat — /help for commands, Ctrl-D to quit.", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            await console.submit(line.rstrip("\n"))
            await gw.wait_idle(timeout=600)
    except KeyboardInterrupt:
        pass
    finally:
        await gw.wait_idle(timeout=60)
        await gw.stop()
    return 0


# -- check / plugins / admin-token -----------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(exc.problems, 1)
    from .runtime import Gateway

    gw = Gateway(config)
    problems = gw.load_plugins()
    problems.extend(gw.check_extra() if hasattr(gw, "check_extra") else [])
    if problems:
        return _fail(problems, 1)
    print(f"ok: {config.source or 'built-in defaults'} is valid "
          f"({len(gw.adapters)} channel accounts, {len(gw.plugins.plugins())} plugins)")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(exc.problems, 1)
    from .runtime import Gateway

    gw = Gateway(config)
    gw.load_plugins()
    rows: list[list[Any]] = [["name", "source", "version", "state", "hooks"]]
    for p in gw.plugins.plugins():
        rows.append([p.name, p.source, p.version or "-", p.state, ", ".join(h.removeprefix("soulgate_")
                                                                         for h in p.hooks)])
        if p.error:
            rows.append(["", "", "", "", f"error: {p.error}"])
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + str(r[4]))
    return 0


def _new_plugin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .scaffold import TemplateError, render_template

    try:
        target = render_template(args.name, Path(args.dir) if args.dir else None)
    except (TemplateError, OSError) as exc:
        return _fail([str(exc)], 1)
    print(f"created plugin {args.name!r} in {target}\n"
          f"next: cd {target} && pip install -e . && soulgate plugins && pytest")
    return 0


async def _admin_token(config: Config) -> int:
    from .runtime import Gateway

    gw = Gateway(config.model_copy(update={"admin": config.admin.model_copy(update={"enabled": False})}))
    try:
        await gw._connect()
        await gw._ensure_admin_token()
        print(gw.admin_token)
    except DatabaseUnavailable as exc:
        return _fail([str(exc)])
    finally:
        if gw.store is not None:
            await gw.store.db.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soulgate", description="Chat gateway for LLM agents.")
    parser.add_argument("--config", "-c", help="config file (default: $SOULGATE_CONFIG or config/soulgate.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway as a service")
    run.add_argument("--role", choices=["all", "ingress", "worker"], default="all")
    sub.add_parser("chat", help="talk to the gateway in this terminal (or pipe lines in)")
    sub.add_parser("check", help="validate config, SOUL files and plugins")
    sub.add_parser("plugins", help="list plugins with source, version, hooks and state")
    new = sub.add_parser("new-plugin", help="create a plugin package from the template (docs/plugins.md)")
    new.add_argument("name", help="plugin name: lower-case letters, digits, _ (also its /command)")
    new.add_argument("--dir", help="where to create it (default: ./soulgate-NAME)")
    sub.add_parser("admin-token", help="print the admin bearer token")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "plugins":
        return _plugins(args)
    if args.command == "new-plugin":
        return _new_plugin(args)
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(exc.problems)
    _setup_logging(config.gateway.log_level, quiet=args.command in ("chat", "admin-token"))
    if args.command == "run":
        return asyncio.run(_run(config, args.role))
    if args.command == "chat":
        return asyncio.run(_chat(config))
    return asyncio.run(_admin_token(config))


if __name__ == "__main__":
    sys.exit(main())
