"""The two stores beneath `Memory`: DuckDB (embedded, one writer process) and PostgreSQL (psycopg 3, many processes).

One SQL schema and one SQL dialect (`?` placeholders, sequences, `INSERT ... RETURNING`, arrays via
`unnest(?::TEXT[])`) run on both; the per-store differences live here: how a connection opens, how a transaction
starts (PostgreSQL writers take one advisory lock per transaction, so concurrent adds serialise instead of racing on
entity resolution), how the drivers' errors map to hotmem's, and who may keep a `Cache` between transactions (the
one writer of a DuckDB file: DuckDB admits one writer process, and this module counts the writers in this one).
Drivers are imported when a store opens.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hotmem.errors import ConfigurationError, MemoryLockedError

logger = logging.getLogger(__name__)

__all__ = ["SCHEMA_VERSION", "Cache", "Store", "marks", "open_store"]

SCHEMA_VERSION = "1"

#: Every table; one sequence numbers the rows of all of them. Times are naive UTC. Mentions are only ever read by
#: fact, so their id carries no index (an index costs every insert).
DDL = """
CREATE SEQUENCE IF NOT EXISTS hm_ids;
CREATE TABLE IF NOT EXISTS hm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hm_entities (
    id BIGINT PRIMARY KEY, key TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS hm_aliases (
    key TEXT PRIMARY KEY, entity_id BIGINT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL,
    session TEXT, said_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS hm_facts (
    id BIGINT PRIMARY KEY, subject_id BIGINT NOT NULL, predicate TEXT NOT NULL, object_id BIGINT NOT NULL,
    scope TEXT, valid_from TIMESTAMP NOT NULL, valid_to TIMESTAMP, ended_by TEXT,
    mentions INTEGER NOT NULL, confidence FLOAT8 NOT NULL, max_confidence FLOAT8 NOT NULL,
    first_seen TIMESTAMP NOT NULL, last_seen TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS hm_facts_subject ON hm_facts (subject_id);
CREATE INDEX IF NOT EXISTS hm_facts_object ON hm_facts (object_id);
CREATE TABLE IF NOT EXISTS hm_mentions (
    id BIGINT NOT NULL, fact_id BIGINT NOT NULL, session TEXT NOT NULL, turn INTEGER NOT NULL, speaker TEXT,
    text TEXT NOT NULL, said_at TIMESTAMP NOT NULL, extractor TEXT NOT NULL, model_version TEXT, confidence FLOAT8 NOT NULL
);
CREATE INDEX IF NOT EXISTS hm_mentions_fact ON hm_mentions (fact_id);
CREATE TABLE IF NOT EXISTS hm_merges (
    id BIGINT PRIMARY KEY, entity_id BIGINT NOT NULL, name TEXT NOT NULL, merged TEXT NOT NULL, reason TEXT NOT NULL,
    session TEXT, said_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS hm_sessions (
    session TEXT PRIMARY KEY, turns INTEGER NOT NULL, started TIMESTAMP NOT NULL, last TIMESTAMP NOT NULL
);
"""

#: Row ids drawn from the sequence per round trip (an add uses a handful; unused ones are skipped numbers).
ID_BLOCK = 64

#: Constant key of the PostgreSQL advisory lock every writing transaction takes ("hotmem" in ASCII).
_PG_WRITE_LOCK = 0x686F746D656D


class Cache:
    """What the only writer of a database knows of it from its earlier transactions: entities by id, their ids by
    name key (None: no such name), open facts by id, the ids of each entity's open facts, and turn counts by session.
    The memory fills and reads it; whatever may have made it stale empties it: a transaction that does not commit,
    a change the memory does not follow (merges, forgetting, sessions ending, imports), another writer opening."""

    #: Past this many entities or open facts it starts over (about 300 bytes an open fact: 60 MB at most).
    LIMIT = 200_000

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.entities: dict[int, Any] = {}
        self.names: dict[str, int | None] = {}
        self.open: dict[int, Any] = {}
        self.facts: dict[int, set[int]] = {}
        self.turns: dict[str, int] = {}

    def trim(self) -> None:
        if len(self.entities) > self.LIMIT or len(self.open) > self.LIMIT:
            self.clear()


def marks(values: Sequence[Any]) -> str:
    """`(?, ?, ?)` for an IN list: both stores look these up by index, where `IN (SELECT unnest(?))` joins."""
    return "(" + ", ".join("?" * len(values)) + ")" if values else "(NULL)"


class Store:
    """A connection and its dialect. Subclasses set `kind` and implement `_connect`, `_begin`, `_end`, `_run`."""

    kind = "sql"

    def __init__(self, target: str, read_only: bool = False) -> None:
        self.target = target
        self.read_only = read_only
        # one connection per Memory; DuckDB and psycopg connections are not for concurrent use from threads
        self.lock = threading.RLock()
        self._depth = 0
        self._ids: deque[int] = deque()
        #: What this connection knows of the database between transactions, when it is its only writer (see `Cache`);
        #: None when other connections may write.
        self.cache: Cache | None = None
        self._connect()
        if not read_only:
            with self.transaction():
                for statement in filter(str.strip, DDL.split(";")):
                    self.execute(statement)
                self.execute(
                    "INSERT INTO hm_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING",
                    (SCHEMA_VERSION,),
                )
        rows = self.fetchall("SELECT value FROM hm_meta WHERE key = 'schema_version'")
        if rows and rows[0][0] != SCHEMA_VERSION:
            raise ConfigurationError(
                f"{target}: memory schema version {rows[0][0]}, this hotmem reads version {SCHEMA_VERSION}"
            )

    # dialect -------------------------------------------------------------------------------------------------------
    def sql(self, statement: str) -> str:
        return statement

    # the one entry points everything else uses ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction (nested calls join the outer one): committed on exit, rolled back on any exception."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._forget_transaction()
                self._end(commit=False)
                raise
            self._depth = 0
            if self.cache is None:
                self._ids.clear()
            try:
                self._end(commit=True)
            except BaseException:
                self._forget_transaction()
                raise

    def _forget_transaction(self) -> None:
        """A transaction did not commit: what the cache learnt in it is false, and its ids are not durable (DuckDB
        logs a sequence's use with the commit, so after a restart they could be drawn again)."""
        self._ids.clear()
        if self.cache is not None:
            self.cache.clear()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        with self.lock:
            self._run(self.sql(statement), params, fetch=False)

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.lock:
            return self._run(self.sql(statement), params, fetch=True)

    def fetchone(self, statement: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.fetchall(statement, params)
        return rows[0] if rows else None

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Many rows in one statement (one round trip; DuckDB's executemany plans each row again)."""
        if rows:
            marks = "(" + ", ".join("?" * len(columns)) + ")"
            self.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([marks] * len(rows)),
                         [value for row in rows for value in row])

    def new_id(self) -> int:
        """A fresh row id, from the shared sequence a block at a time. A sole writer keeps the rest for its next
        transactions (a sequence never hands a value out twice); otherwise they are dropped at commit, so that ids
        keep following the order in which concurrent writers commit."""
        if not self._ids:
            rows = self.fetchall(f"SELECT nextval('hm_ids') FROM {self._SERIES}", (ID_BLOCK,))
            self._ids.extend(r[0] for r in rows)
        return self._ids.popleft()

    _SERIES = "range(?)"

    def close(self) -> None:
        raise NotImplementedError

    # per store -----------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self, commit: bool) -> None:
        raise NotImplementedError

    def _run(self, statement: str, params: Sequence[Any], fetch: bool) -> list[tuple]:
        raise NotImplementedError


#: Writing DuckDB stores open in this process, by file: DuckDB admits one writer process, so a store alone in its
#: list writes its file alone and may keep a `Cache`.
_DUCKDB_WRITERS: dict[str, weakref.WeakSet[DuckDBStore]] = {}
_DUCKDB_WRITERS_LOCK = threading.Lock()


class DuckDBStore(Store):
    """An embedded DuckDB file. DuckDB lets one process write a file at a time: a second process gets
    `MemoryLockedError` when it opens the file, never a half-written one (DuckDB's WAL keeps commits atomic). The
    only writing store of a file in this process keeps a `Cache`; a second one turns both caches off."""

    kind = "duckdb"

    def _share(self, joining: bool) -> None:
        """Join or leave the file's writers; the cache is on exactly while one is left (and starts empty)."""
        key = str(Path(self.target).resolve())
        with _DUCKDB_WRITERS_LOCK:
            writers = _DUCKDB_WRITERS.setdefault(key, weakref.WeakSet())
            if joining:
                writers.add(self)
            else:
                writers.discard(self)
            for store in writers:
                with store.lock:  # after any transaction in progress
                    store.cache = Cache() if len(writers) == 1 else None
        if not joining:
            self.cache = None

    def _connect(self) -> None:
        import duckdb

        path = Path(self.target)
        if self.read_only and not path.is_file():
            raise ConfigurationError(f"no memory at {path}")
        if path.parent and not path.parent.exists():
            raise ConfigurationError(f"folder {path.parent} does not exist (for memory file {path.name})")
        try:
            self.con = duckdb.connect(str(path), read_only=self.read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise MemoryLockedError(
                    f"{path} is open for writing in another process (DuckDB allows one writer process per file; "
                    f"use a PostgreSQL memory for many processes): {exc}"
                ) from None
            raise ConfigurationError(f"cannot open memory {path}: {exc}") from None
        except duckdb.Error as exc:
            raise ConfigurationError(f"cannot open memory {path}: {exc}") from None
        # hotmem's statements are small lookups and writes, which a second thread only slows (hand-offs: a tenth of
        # an add on a shared two-core machine); the setting is the database's, so other connections to this file in
        # this process share it
        self.con.execute("SET threads = 1")
        if not self.read_only:
            self._share(joining=True)

    def _begin(self) -> None:
        self.con.begin()

    def _end(self, commit: bool) -> None:
        if commit:
            self.con.commit()
        else:
            self.con.rollback()

    def _run(self, statement: str, params: Sequence[Any], fetch: bool) -> list[tuple]:
        cursor = self.con.execute(statement, list(params))
        return cursor.fetchall() if fetch else []

    def close(self) -> None:
        if not self.read_only:
            self._share(joining=False)
        self.con.close()


class PostgresStore(Store):
    """A PostgreSQL database through psycopg 3: any number of processes read and write; each writing transaction
    holds one advisory lock, so concurrent adds resolve entities one after the other and all land."""

    kind = "postgresql"
    _PLACEHOLDER = re.compile(r"\?")
    _SERIES = "generate_series(1, ?)"

    def _connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                "a PostgreSQL memory needs psycopg 3: pip install 'hotmem[memory]'"
            ) from None
        try:
            self.con = psycopg.connect(self.target, autocommit=True)
        except psycopg.Error as exc:
            raise ConfigurationError(f"cannot connect to PostgreSQL memory: {exc}") from None
        self._tx = None

    def sql(self, statement: str) -> str:
        # our statements hold no literal '?' or '%'
        return self._PLACEHOLDER.sub("%s", statement)

    def _begin(self) -> None:
        self._tx = self.con.transaction()
        self._tx.__enter__()
        if not self.read_only:
            self.con.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))

    def _end(self, commit: bool) -> None:
        tx, self._tx = self._tx, None
        if commit:
            tx.__exit__(None, None, None)
        else:
            tx.__exit__(RuntimeError, RuntimeError("rolled back"), None)

    def _run(self, statement: str, params: Sequence[Any], fetch: bool) -> list[tuple]:
        cursor = self.con.execute(statement, list(params) if params else None)
        return cursor.fetchall() if fetch else []

    def close(self) -> None:
        self.con.close()


def open_store(target: str | Path, read_only: bool = False) -> Store:
    """`postgresql://...` / `postgres://...` opens PostgreSQL; anything else is a DuckDB file path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, read_only=read_only)
    return DuckDBStore(text, read_only=read_only)
