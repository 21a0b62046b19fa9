"""The memory bank in a database server: PostgreSQL (also SQLite, MS SQL) through one URL.

    --memory-bank "postgresql://inspector@dbhost:5432/inspection?table=detections"

The table has the columns of the SQLite layout in memory-bank/README.md, one row per detection.
SQLAlchemy turns the URL into a connection (``postgresql://`` uses psycopg 3), so a plant on
MS SQL gives ``mssql+pyodbc://...`` and the same code reads it.

- Reading streams the rows through a server-side cursor in primary-key order: a million rows
  are never in memory at once, only the typed columns of ``toolkit.memory_bank`` are.
- ``--since/--until`` become a WHERE clause: a week of a year-long table is all the server sends.
- The password never appears in the URL the toolkit shows: it comes from ``PGPASSWORD`` or
  ``.pgpass`` (libpq reads both); a URL that holds one is shown with ``***``.
- Every problem is one line: server unreachable, authentication failed, table missing (naming
  the tables found), a column missing or of the wrong type. A malformed row is counted with its
  primary key, as a malformed line is counted with its line number.

Usage (from code):
    bank = read_memory_bank("postgresql://inspector@dbhost/inspection?table=detections")
    with SqlAppender("postgresql://...") as out: out.append(records)   # toolkit.detection_api does this
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

from toolkit.errors import UserError
from toolkit.memory_bank import (ALL_COLUMNS, REQUIRED_COLUMNS, ROW_COLUMNS, SQLITE_TABLE, record_rows)

logger = logging.getLogger(__name__)

# dialects a memory-bank URL may name (what SQLAlchemy knows; a driver may need installing)
_URL = re.compile(r"^(postgresql|postgres|sqlite|mssql|mysql|mariadb|oracle)(\+[a-z0-9_]+)?://", re.IGNORECASE)
STREAM_ROWS = 20_000  # rows per round trip of the server-side cursor
CONNECT_TIMEOUT_S = 10
TEXT_COLUMNS = ("image", "model_version", "class", "source", "kind")
NUMBER_COLUMNS = ("confidence", "x1", "y1", "x2", "y2", "image_width", "image_height")


def is_database_url(text: str | Any) -> bool:
    """True for ``postgresql://...``, ``sqlite:///...``, ``mssql+pyodbc://...``; False for file paths."""
    return isinstance(text, str) and bool(_URL.match(text.strip()))


@dataclass(frozen=True)
class BankLocation:
    """A parsed memory-bank URL: the connection URL (no ``table``), the table and its schema."""

    url: Any            # sqlalchemy.engine.URL, with the driver filled in
    shown: str          # the URL as the user wrote it, password masked: safe for logs and reports
    table: str
    schema: str | None

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @property
    def where(self) -> str:
        """host:port (or the socket / file), for messages."""
        if self.backend == "sqlite":
            return self.url.database or "memory"
        host = self.url.host or "the local socket"
        return f"{host}:{self.url.port}" if self.url.port else host


def parse_url(text: str) -> BankLocation:
    """``postgresql://user@host:5432/db?table=schema.detections`` -> BankLocation; UserError if not a URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError):
        raise UserError(f"{mask_url(text)!r} is not a database URL; write it like "
                        "postgresql://user@host:5432/inspection?table=detections") from None
    query = dict(url.query)
    table = query.pop("table", SQLITE_TABLE)
    if isinstance(table, tuple):
        table = table[-1]
    schema, _, name = table.rpartition(".")
    if not name:
        raise UserError(f"{mask_url(text)}: ?table= names no table; e.g. ?table=detections")
    url = url.set(query=query)
    shown = url.render_as_string(hide_password=True) + f"{'&' if query else '?'}table={table}"
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, not SQLAlchemy's default psycopg2
    return BankLocation(url=url, shown=shown, table=name, schema=schema or None)


def mask_url(text: str) -> str:
    """A URL with any password replaced by ``***`` (for text that is not even a valid URL, too)."""
    return re.sub(r"(://[^/:@\s]*:)[^@/\s]*@", r"\1***@", str(text))


# --- connections and one-line errors -------------------------------------------------------------

def create_engine_for(loc: BankLocation):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    connect_args: dict[str, Any] = {}
    if loc.backend == "postgresql":
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "defect-retraining-toolkit"}
    try:
        return create_engine(loc.url, connect_args=connect_args, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError, ArgumentError) as exc:
        raise UserError(f"{loc.shown}: no database driver for '{loc.url.drivername}' ({_first_line(exc)}); "
                        "PostgreSQL needs 'pip install psycopg[binary]', MS SQL 'pip install pyodbc'") from None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def database_error(loc: BankLocation, exc: BaseException) -> UserError:
    """One line saying what went wrong with the server and what to fix; never the password."""
    detail = _first_line(exc)
    if loc.url.password:
        detail = detail.replace(str(loc.url.password), "***")
    low = str(getattr(exc, "orig", None) or exc).lower()
    user = loc.url.username or "(default user)"
    if ("authentication failed" in low or "no password supplied" in low or "password" in low and "required" in low
            or ("role" in low and "does not exist" in low)):
        return UserError(f"{loc.shown}: authentication failed for user '{user}' on {loc.where}; put the password "
                         "in PGPASSWORD or .pgpass (pgpass.conf on Windows), not in the URL")
    if "permission denied" in low:
        return UserError(f"{loc.shown}: user '{user}' may not use table '{loc.table}' ({detail}); ask the database "
                         f"administrator for GRANT SELECT (and INSERT for --scan) ON {loc.table} TO {user}")
    if "database" in low and "does not exist" in low:
        return UserError(f"{loc.shown}: the server at {loc.where} has no database '{loc.url.database}'; "
                         "check the database name in the URL")
    if any(p in low for p in ("connection refused", "could not connect", "timeout expired", "timed out",
                              "could not translate host name", "name or service not known", "no such file or directory",
                              "network is unreachable", "no route to host", "connection to server")):
        return UserError(f"{loc.shown}: cannot reach the database server at {loc.where} ({detail}); "
                         "check that it is running and the host and port in the URL")
    return UserError(f"{loc.shown}: database error: {detail}")


# --- the table: checks, reading ------------------------------------------------------------------

@dataclass(frozen=True)
class TableInfo:
    columns: dict[str, Any]     # name -> SQLAlchemy type
    line_column: str | None     # integer primary key (or SQLite's rowid): ORDER BY it, report it


def _type_kind(sqltype: Any) -> str:
    """'text', 'number', 'integer', 'datetime' or 'any' (SQLite columns declared without a type)."""
    from sqlalchemy import types

    if isinstance(sqltype, types.NullType):
        return "any"
    if isinstance(sqltype, types.Integer):
        return "integer"
    if isinstance(sqltype, types.Float):  # before Numeric: Float is a Numeric in SQLAlchemy 2.0
        return "number"
    if isinstance(sqltype, types.Numeric):  # NUMERIC / DECIMAL: read as Decimal unless cast
        return "decimal"
    if isinstance(sqltype, (types.DateTime, types.Date)):
        return "datetime"
    if isinstance(sqltype, types.String):
        return "text"
    return str(sqltype).lower()


def inspect_table(conn, loc: BankLocation, for_reading: bool = True) -> TableInfo:
    """The table's columns and ordering key; UserError naming what is missing or mistyped."""
    from sqlalchemy import inspect

    insp = inspect(conn)
    tables = insp.get_table_names(schema=loc.schema)
    views = insp.get_view_names(schema=loc.schema)
    if loc.table not in tables and loc.table not in views:
        found = ", ".join(sorted(tables + views)) or "none"
        raise UserError(f"{loc.shown}: no table '{loc.table}' in database '{loc.url.database}' (tables found: {found}); "
                        "give the right one with ?table=NAME")
    columns = {c["name"]: c["type"] for c in insp.get_columns(loc.table, schema=loc.schema)}
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{loc.shown}: table '{loc.table}' lacks column(s) {', '.join(missing)}; "
                        "the layout is in memory-bank/README.md")
    wanted = {"timestamp": ("text", "datetime"), **{c: ("text",) for c in TEXT_COLUMNS},
              **{c: ("number", "decimal", "integer") for c in NUMBER_COLUMNS}}
    for name, kinds in wanted.items():
        if name in columns:
            kind = _type_kind(columns[name])
            if kind != "any" and kind not in kinds:
                need = {"text": "text (varchar)", "number": "a number (double precision)",
                        "datetime": "a timestamp"}
                raise UserError(f"{loc.shown}: column '{name}' of table '{loc.table}' is {columns[name]}; "
                                f"it must be {' or '.join(need[k] for k in kinds if k in need)} "
                                "(see memory-bank/README.md)")
    pk = insp.get_pk_constraint(loc.table, schema=loc.schema).get("constrained_columns") or []
    line_column = None
    if len(pk) == 1 and _type_kind(columns.get(pk[0])) == "integer":
        line_column = pk[0]
    elif loc.backend == "sqlite":
        line_column = "rowid"
    return TableInfo(columns=columns, line_column=line_column)


def _day(seconds: float, days: int) -> str:
    return (datetime.fromtimestamp(seconds, timezone.utc) + timedelta(days=days)).date().isoformat()


def build_select(loc: BankLocation, info: TableInfo, dialect, since: float | None,
                 until: float | None) -> tuple[str, dict[str, Any]]:
    """The SELECT of the ROW_COLUMNS in reading order, with ``since/until`` as a WHERE clause.

    A text timestamp is compared as text with a day of margin either side (a time zone shifts it
    by at most 14 hours); the reader then applies the exact bounds. Rows whose timestamp does not
    start with a digit (or is NULL) are always sent: they are malformed records, counted as in a file.
    """
    quote = dialect.identifier_preparer.quote
    table = (f"{quote(loc.schema)}." if loc.schema else "") + quote(loc.table)
    cols = info.columns

    def col(name: str) -> str:
        if name not in cols:
            return "NULL"
        kind = _type_kind(cols[name])
        if kind == "decimal" and loc.backend == "postgresql":  # NUMERIC would come back as Decimal
            return f"CAST({quote(name)} AS DOUBLE PRECISION)"
        return quote(name)

    line = info.line_column
    line_sql = ("rowid" if line == "rowid" else quote(line)) if line else "NULL"
    select = ", ".join([line_sql] + [col(c) for c in ROW_COLUMNS[1:]])
    sql = f"SELECT {select} FROM {table}"
    params: dict[str, Any] = {}
    ts = quote("timestamp")
    # rows that are malformed whatever their time (no image, an unreadable timestamp) are always
    # sent, so that they are counted as in a file, where the record is checked before the filter
    no_image = f"{quote('image')} IS NULL OR {quote('image')} = ''"
    if since is not None or until is not None:
        if _type_kind(cols["timestamp"]) == "datetime":
            aware = bool(getattr(cols["timestamp"], "timezone", False))

            def bound(seconds: float) -> datetime:
                moment = datetime.fromtimestamp(seconds, timezone.utc)
                return moment if aware else moment.replace(tzinfo=None)

            parts = []
            if since is not None:
                parts.append(f"{ts} >= :since")
                params["since"] = bound(since)
            if until is not None:
                parts.append(f"{ts} <= :until")
                params["until"] = bound(until)
            sql += f" WHERE ({' AND '.join(parts)}) OR {ts} IS NULL OR {no_image}"
        else:
            text_ts = f'{ts} COLLATE "C"' if loc.backend == "postgresql" else ts
            parts = []
            if since is not None:
                parts.append(f"{text_ts} >= :since")
                params["since"] = _day(since, -1)
            if until is not None:
                parts.append(f"{text_ts} < :until")
                params["until"] = _day(until, 2)
            sql += (f" WHERE ({' AND '.join(parts)}) OR {ts} IS NULL OR {text_ts} < '0' OR {text_ts} >= ':' "
                    f"OR {no_image}")
    if line:
        sql += f" ORDER BY {line_sql}"
    return sql, params


def sql_rows(location: str, since: float | None = None, until: float | None = None,
             stats: dict[str, Any] | None = None) -> Iterator[tuple]:
    """Stream the table's rows as ROW_COLUMNS tuples; ``stats`` receives 'rows' and 'shown'."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    loc = parse_url(location)
    engine = create_engine_for(loc)
    stats = stats if stats is not None else {}
    stats["shown"] = loc.shown
    n = 0
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise database_error(loc, exc) from None
        with conn:
            try:
                info = inspect_table(conn, loc)
            except SQLAlchemyError as exc:
                raise database_error(loc, exc) from None
            if info.line_column is None:
                logger.warning("%s: table '%s' has no integer primary key; rows are read in the server's order "
                               "and reported by row number (add an id column, see memory-bank/README.md)",
                               loc.shown, loc.table)
            conn.rollback()  # end the inspection's transaction: the read gets its own, read-only
            sql, params = build_select(loc, info, engine.dialect, since, until)
            logger.debug("memory bank query: %s %s", sql, params)
            options: dict[str, Any] = {"stream_results": True, "yield_per": STREAM_ROWS}
            if loc.backend == "postgresql":
                options["postgresql_readonly"] = True  # the analyzer never writes the plant's database
            try:
                result = conn.execution_options(**options).execute(text(sql), params)
                numbered = info.line_column is None
                for partition in result.partitions():
                    if numbered:
                        for row in partition:
                            n += 1
                            yield (n, *row[1:])
                    else:
                        n += len(partition)
                        yield from partition
            except DBAPIError as exc:
                raise database_error(loc, exc) from None
    finally:
        stats["rows"] = n
        engine.dispose()


# --- writing ------------------------------------------------------------------------------------

def _memory_bank_table(loc: BankLocation):
    """The table the toolkit creates when it writes first: the README layout plus an id key."""
    from sqlalchemy import (BigInteger, Column, Float, Identity, Index, Integer, MetaData, Table, Text)

    meta = MetaData(schema=loc.schema)
    number = Float(precision=53)
    table = Table(
        loc.table, meta,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
        Column("timestamp", Text, nullable=False), Column("image", Text, nullable=False),
        Column("model_version", Text), Column("class", Text), Column("confidence", number),
        Column("x1", number), Column("y1", number), Column("x2", number), Column("y2", number),
        Column("source", Text), Column("image_width", Integer), Column("image_height", Integer), Column("kind", Text))
    if loc.backend == "postgresql":  # byte order: what the text WHERE of --since/--until compares in
        Index(f"{loc.table}_timestamp_idx", table.c.timestamp.collate("C"))
    else:
        Index(f"{loc.table}_timestamp_idx", table.c.timestamp)
    return table


class SqlAppender:
    """Appends schema records as rows; the rows of one call are one transaction (never half a record).

    On PostgreSQL a transaction-level advisory lock keeps the rows of concurrent writers in
    consecutive ids, so the reader (ordering by id) never sees two records interleaved. The table
    is created with the README layout (and an ``id`` identity key) when it does not exist.
    """

    def __init__(self, location: str) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        self.loc = parse_url(location)
        self.engine = create_engine_for(self.loc)
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"memory-bank:{self.loc.schema}.{self.loc.table}".encode()).digest()[:8], "big",
            signed=True)
        try:
            self.table = self._table()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise database_error(self.loc, exc) from None

    def _table(self):
        from sqlalchemy import MetaData, Table, inspect
        from sqlalchemy.exc import SQLAlchemyError

        wanted = _memory_bank_table(self.loc)
        with self.engine.connect() as conn:
            exists = inspect(conn).has_table(self.loc.table, schema=self.loc.schema)
        if not exists:
            try:
                wanted.metadata.create_all(self.engine, checkfirst=True)
                logger.info("created table %s in %s", self.loc.table, self.loc.shown)
            except SQLAlchemyError:  # another writer created it at the same moment
                with self.engine.connect() as conn:
                    if not inspect(conn).has_table(self.loc.table, schema=self.loc.schema):
                        raise
        with self.engine.connect() as conn:
            inspect_table(conn, self.loc, for_reading=False)  # same checks as the reader: one line if wrong
            return Table(self.loc.table, MetaData(schema=self.loc.schema), autoload_with=conn)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert the records' rows in one transaction; returns the number of records."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        names = [c for c in ALL_COLUMNS if c in self.table.c]
        rows, count = [], 0
        for record in records:
            count += 1
            for row in record_rows(record):
                rows.append({c: (None if row[c] == "" else row[c]) for c in names})
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                if self.loc.backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})
                conn.execute(self.table.insert(), rows)
        except SQLAlchemyError as exc:
            raise database_error(self.loc, exc) from None
        return count

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "SqlAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
