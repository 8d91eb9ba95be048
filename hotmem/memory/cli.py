"""`hotmem memory add | query | history | export`: the memory from the shell. `add_parser` registers it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hotmem.errors import HotmemError, InvalidInputError

__all__ = ["add_parser"]

#: The memory a command opens unless `--db` says otherwise.
DEFAULT_DB = os.environ.get("HOTMEM_MEMORY", "memory.duckdb")


def _open(args: argparse.Namespace):
    from hotmem.memory import Memory

    return Memory(args.db)


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except HotmemError as exc:
            print(f"hotmem: error: {exc}", file=sys.stderr)
            return 2

    return run


def _print_facts(facts, as_json: bool, empty: str) -> None:
    if as_json:
        print(json.dumps([f.model_dump(mode="json") for f in facts], indent=2, ensure_ascii=False))
    elif not facts:
        print(empty)
    else:
        for fact in facts:
            print(fact)


def _add(args: argparse.Namespace) -> int:
    from hotmem.types import Graph

    text = " ".join(args.text) if args.text != ["-"] else sys.stdin.read()
    graph = None
    if args.graph:
        path = Path(args.graph)
        if not path.is_file():
            raise InvalidInputError(f"no graph file at {path}")
        try:
            graph = Graph.from_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InvalidInputError(f"{path}: not a graph ({exc})") from None
    with _open(args) as memory:
        result = memory.add(text or None, speaker=args.speaker, session=args.session, at=args.at, graph=graph,
                            persist=not args.working)
    print(result.model_dump_json(indent=2) if args.json else str(result))
    return 0


def _query(args: argparse.Namespace) -> int:
    what = " ".join(args.entity)
    with _open(args) as memory:
        if args.about:
            facts = memory.about(what, speaker=args.speaker, session=args.session)
        else:
            facts = memory.facts(what, at=args.at, session=args.session, include_ended=args.all,
                                 speaker=args.speaker)
    _print_facts(facts, args.json, f"no facts about {what!r}")
    return 0


def _history(args: argparse.Namespace) -> int:
    with _open(args) as memory:
        facts = memory.history(args.entity, args.predicate, speaker=args.speaker)
    _print_facts(facts, args.json, f"no history of {args.entity!r}")
    return 0


def _export(args: argparse.Namespace) -> int:
    with _open(args) as memory:
        lines = memory.export(args.path)
    print(f"{lines} lines written to {args.path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `memory` and its sub-commands on a `hotmem` parser's sub-parsers; each sets `func`."""
    memory = subparsers.add_parser("memory", help="remember conversations in a knowledge graph and query it")
    commands = memory.add_subparsers(dest="memory_command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        parser.add_argument("--db", default=DEFAULT_DB,
                            help=f"a DuckDB file or a postgresql:// URL (default: $HOTMEM_MEMORY or {DEFAULT_DB})")
        parser.add_argument("--speaker", default=None, help="who speaks: I/me/my resolve to this name")
        parser.set_defaults(func=_guarded(handler))
        return parser

    add = command("add", _add, "extract a text ('-' reads stdin) and remember its facts")
    add.add_argument("text", nargs="*", default=[])
    add.add_argument("--session", default="default", help="conversation the text belongs to")
    add.add_argument("--at", default=None, help="when it was said (ISO time; default now)")
    add.add_argument("--graph", default=None, help="a graph JSON file to remember instead of extracting the text")
    add.add_argument("--working", action="store_true", help="keep the facts in the session's working memory only")
    add.add_argument("--json", action="store_true", help="print what changed as JSON")

    query = command("query", _query, "facts about an entity (or, with --about, relevant to an utterance)")
    query.add_argument("entity", nargs="+")
    query.add_argument("--about", action="store_true", help="read the words as an utterance, not an entity name")
    query.add_argument("--at", default=None, help="facts valid at this ISO time instead of now")
    query.add_argument("--all", action="store_true", help="ended facts too")
    query.add_argument("--session", default=None, help="include this session's working memory")
    query.add_argument("--json", action="store_true")

    history = command("history", _history, "every value a predicate of an entity had, oldest first")
    history.add_argument("entity")
    history.add_argument("predicate", nargs="?", default=None)
    history.add_argument("--json", action="store_true")

    export = command("export", _export, "write the memory as JSON lines")
    export.add_argument("path")
