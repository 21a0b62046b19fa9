"""The memory bank in a database server: PostgreSQL (also SQLite, MS SQL) through one URL.

    --memory-bank "postgresql://inspector@dbhost:5432/inspection?table=detections"

The table has the columns of the SQLite layout in memory-bank/README.md, one row per detection.
The URL is SQLAlchemy's, so a plant on MS SQL gives ``mssql+pyodbc://...`` and SQLAlchemy
reads (and writes) it; PostgreSQL, the hot path, is read straight through psycopg 3's own
server-side cursor and written through SQLAlchemy with psycopg 3 as its driver.

- PostgreSQL sends the rows in primary-key order by ``COPY ... TO STDOUT``, parsed by pyarrow's
  CSV reader; other dialects through ``pandas.read_sql``. Either way pandas frames of rows
  (``read_rows``: one, or chunk by chunk), checked by ``toolkit.memory.bank_rows.records_from_rows``.
- ``--since/--until`` become a WHERE clause: a week of a year-long table is all the server sends.
- The password never appears in the URL the toolkit shows: it comes from ``PGPASSWORD`` or
  ``.pgpass`` (libpq reads both); a URL that holds one is shown with ``***``.
- Every problem is one line: server unreachable, authentication failed, table missing (naming
  the tables found), a column missing or of the wrong type. A malformed row is counted with its
  primary key, as a malformed line is counted with its line number.

Usage (from code):
    bank = read_memory_bank("postgresql://inspector@dbhost/inspection?table=detections")
    with SqlAppender("postgresql://...") as out: out.append(records)   # toolkit.memory.detection_api does this
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from toolkit.core.errors import UserError
from toolkit.core.redact import mask_url, split_url
from toolkit.memory.bank_table import ALL_COLUMNS, REQUIRED_COLUMNS, ROW_COLUMNS, SQLITE_TABLE, record_rows

logger = logging.getLogger(__name__)

# dialects a memory-bank URL may name (what SQLAlchemy knows; a driver may need installing)
_URL = re.compile(r"^(postgresql|postgres|sqlite|mssql|mysql|mariadb|oracle)(\+[a-z0-9_]+)?://", re.IGNORECASE)
CONNECT_TIMEOUT_S = 10
APPLICATION = "defect-retraining-toolkit"  # how the toolkit's connections appear in pg_stat_activity
TEXT_COLUMNS = ("image", "model_version", "class", "source", "kind")
NUMBER_COLUMNS = ("confidence", "x1", "y1", "x2", "y2", "image_width", "image_height")


def is_database_url(text: str | Any) -> bool:
    """True for ``postgresql://...``, ``sqlite:///...``, ``mssql+pyodbc://...``; False for file paths."""
    return isinstance(text, str) and bool(_URL.match(text.strip()))


_URL_LIKE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]+):/")


def refuse_url_typo(text: Any) -> None:
    """UserError for a memory-bank location that is written like a URL of an unknown scheme
    (``postgersql://``, ``postgresql:/``): taken for a file path, its password would be printed in a
    "not found" line (and the writer would make folders of it). The URL itself is not repeated."""
    if not isinstance(text, str) or is_database_url(text):
        return
    found = _URL_LIKE.match(text)
    if found:
        raise UserError(f"the memory bank {found.group(1)!r}:/... is neither a file nor a database URL this toolkit "
                        "reads; write it like postgresql://user@host:5432/inspection?table=detections (or sqlite:///"
                        "PATH, mssql+pyodbc://...), the password in PGPASSWORD or .pgpass")


@dataclass(frozen=True)
class BankLocation:
    """A parsed memory-bank URL: where the server is, the table (and schema), what may be shown."""

    backend: str            # postgresql, sqlite, mssql, ...
    drivername: str         # SQLAlchemy's name: postgresql+psycopg, sqlite, mssql+pyodbc, ...
    host: str | None
    port: int | None
    username: str | None
    password: str | None
    database: str | None
    query: dict[str, str]   # other URL parameters (sslmode=require, ...), without ``table``
    table: str
    schema: str | None
    shown: str              # the URL as written, password masked: safe for logs and reports

    @property
    def where(self) -> str:
        """host:port (or the socket / file), for messages."""
        if self.backend == "sqlite":
            return self.database or "memory"
        host = self.host or "the local socket"
        return f"{host}:{self.port}" if self.port else host

    def sa_url(self):
        """The SQLAlchemy URL (imports SQLAlchemy: only the writer and non-PostgreSQL readers need it)."""
        from sqlalchemy.engine import URL

        return URL.create(self.drivername, username=self.username, password=self.password, host=self.host,
                          port=self.port, database=self.database, query=self.query)


def parse_url(text: str) -> BankLocation:
    """``postgresql://user@host:5432/db?table=schema.detections`` -> BankLocation; UserError if not a URL.

    PostgreSQL URLs are parsed here (the reader then needs no SQLAlchemy import, a third of a second
    of every run); other dialects by SQLAlchemy. The user information ends at the last ``@`` before
    the host (``split_url``), so a password may hold ``@``, ``/`` or ``:`` written raw.
    """
    from urllib.parse import parse_qsl, unquote

    text = str(text).strip()
    shown = mask_url(text)
    bad = UserError(f"{shown!r} is not a database URL; write it like "
                    "postgresql://user@host:5432/inspection?table=detections")
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        parts = split_url(text)
        if parts is None:
            raise bad
        _, userinfo, hostport, tail = parts
        user, has_pw, password = (userinfo or "").partition(":")
        if hostport.startswith("["):  # [::1]:5432
            host, _, rest = hostport[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = hostport.partition(":")
        if port_text and not port_text.isdigit():
            raise UserError(f"{shown!r} is not a database URL: its port {port_text[:20]!r} is not a number; write it like "
                            "postgresql://user@host:5432/inspection?table=detections")
        path, _, query_text = tail.split("#", 1)[0].partition("?")
        query = dict(parse_qsl(query_text, keep_blank_values=True))
        table = query.pop("table", SQLITE_TABLE)
        loc = dict(backend="postgresql", drivername="postgresql+psycopg", host=unquote(host) or None,
                   port=int(port_text) if port_text else None, username=unquote(user) or None,
                   password=unquote(password) if has_pw else None,
                   database=unquote(path.lstrip("/")) or None, query=query)
    else:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            raise bad from None
        query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
        table = query.pop("table", SQLITE_TABLE)
        loc = dict(backend=url.get_backend_name(), drivername=url.drivername, host=url.host, port=url.port,
                   username=url.username, password=url.password, database=url.database, query=query)
    schema, _, name = table.rpartition(".")
    if not name:
        raise UserError(f"{shown}: ?table= names no table; e.g. ?table=detections")
    if "password" in query:  # ?password=... is a libpq parameter too: treated like one in the URL (masked above)
        given = query.pop("password")
        loc["password"] = loc["password"] or given
    return BankLocation(table=name, schema=schema or None, shown=shown, **loc)


# --- connections and one-line errors -------------------------------------------------------------

def create_engine_for(loc: BankLocation):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    connect_args: dict[str, Any] = {}
    if loc.backend == "postgresql":
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": APPLICATION}
    try:
        return create_engine(loc.sa_url(), connect_args=connect_args, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError, ArgumentError) as exc:
        raise UserError(f"{loc.shown}: no database driver for '{loc.drivername}' ({_first_line(exc)}); "
                        "PostgreSQL needs 'pip install psycopg[binary]', MS SQL 'pip install pyodbc'") from None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def database_error(loc: BankLocation, exc: BaseException) -> UserError:
    """One line saying what went wrong with the server and what to fix; never the password."""
    detail = _first_line(exc)
    if loc.password:
        detail = detail.replace(loc.password, "***")
    low = str(getattr(exc, "orig", None) or exc).lower()
    user = loc.username or "(default user)"
    if ("authentication failed" in low or "no password supplied" in low or "password" in low and "required" in low
            or ("role" in low and "does not exist" in low)):
        return UserError(f"{loc.shown}: authentication failed for user '{user}' on {loc.where}; put the password "
                         "in PGPASSWORD or .pgpass (pgpass.conf on Windows), not in the URL")
    if "permission denied" in low:
        return UserError(f"{loc.shown}: user '{user}' may not use table '{loc.table}' ({detail}); ask the database "
                         f"administrator for GRANT SELECT (and INSERT for --scan) ON {loc.table} TO {user}")
    if "database" in low and "does not exist" in low:
        return UserError(f"{loc.shown}: the server at {loc.where} has no database '{loc.database}'; "
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
    columns: dict[str, str]     # name -> kind: text, number, decimal, integer, datetime, datetimetz, any, other
    types: dict[str, str]       # name -> the type as the database names it (for messages)
    line_column: str | None     # integer primary key (or SQLite's rowid): ORDER BY it, report it


def _sa_kind(sqltype: Any) -> str:
    from sqlalchemy import types

    if isinstance(sqltype, types.NullType):
        return "any"  # SQLite columns declared without a type
    if isinstance(sqltype, types.Integer):
        return "integer"
    if isinstance(sqltype, types.Float):  # before Numeric: Float is a Numeric in SQLAlchemy 2.0
        return "number"
    if isinstance(sqltype, types.Numeric):  # NUMERIC / DECIMAL: read as Decimal unless cast
        return "decimal"
    if isinstance(sqltype, (types.DateTime, types.Date)):
        return "datetimetz" if getattr(sqltype, "timezone", False) else "datetime"
    if isinstance(sqltype, types.String):
        return "text"
    return "other"


_PG_KINDS = {"text": "text", "character varying": "text", "character": "text", "name": "text", "citext": "text",
             "double precision": "number", "real": "number", "numeric": "decimal", "integer": "integer",
             "bigint": "integer", "smallint": "integer", "date": "datetime",
             "timestamp without time zone": "datetime", "timestamp with time zone": "datetimetz"}


def _check_columns(loc: BankLocation, columns: dict[str, str], types: dict[str, str],
                   line_column: str | None) -> TableInfo:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{loc.shown}: table '{loc.table}' lacks column(s) {', '.join(missing)}; "
                        "the layout is in memory-bank/README.md")
    number = ("number", "decimal", "integer")
    wanted = {"timestamp": ("text", "datetime", "datetimetz"), **{c: ("text",) for c in TEXT_COLUMNS},
              **{c: number for c in NUMBER_COLUMNS}}
    for name, kinds in wanted.items():
        kind = columns.get(name)
        if kind is not None and kind != "any" and kind not in kinds:
            need = "text (varchar) or a timestamp" if name == "timestamp" else (
                "text (varchar)" if kinds == ("text",) else "a number (double precision)")
            raise UserError(f"{loc.shown}: column '{name}' of table '{loc.table}' is {types[name]}; it must be {need} "
                            "(see memory-bank/README.md)")
    return TableInfo(columns=columns, types=types, line_column=line_column)


def _tables_missing(loc: BankLocation, found: list[str]) -> UserError:
    return UserError(f"{loc.shown}: no table '{loc.table}' in database '{loc.database}' "
                     f"(tables found: {', '.join(sorted(found)) or 'none'}); give the right one with ?table=NAME")


def inspect_table(conn, loc: BankLocation) -> TableInfo:
    """Through SQLAlchemy: the table's columns and ordering key; UserError naming what is wrong."""
    from sqlalchemy import inspect

    insp = inspect(conn)
    tables = insp.get_table_names(schema=loc.schema) + insp.get_view_names(schema=loc.schema)
    if loc.table not in tables:
        raise _tables_missing(loc, tables)
    reflected = {c["name"]: c["type"] for c in insp.get_columns(loc.table, schema=loc.schema)}
    columns = {name: _sa_kind(t) for name, t in reflected.items()}
    pk = insp.get_pk_constraint(loc.table, schema=loc.schema).get("constrained_columns") or []
    line_column = pk[0] if len(pk) == 1 and columns.get(pk[0]) == "integer" else None
    if line_column is None and loc.backend == "sqlite":
        line_column = "rowid"
    return _check_columns(loc, columns, {n: str(t) for n, t in reflected.items()}, line_column)


def _inspect_postgres(con, loc: BankLocation) -> TableInfo:
    """The same checks from PostgreSQL's catalog, in two queries on the reading connection."""
    schema_sql = "%(schema)s" if loc.schema else "current_schema()"
    params = {"schema": loc.schema, "table": loc.table}
    tables = [r[0] for r in con.execute(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = {schema_sql}", params)]
    if loc.table not in tables:
        raise _tables_missing(loc, tables)
    rows = con.execute(
        "SELECT c.column_name, c.data_type, c.udt_name, EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indisprimary AND a.attname = c.column_name "
        "AND i.indrelid = format('%%I.%%I', c.table_schema, c.table_name)::regclass AND array_length(i.indkey, 1) = 1) "
        f"FROM information_schema.columns c WHERE c.table_schema = {schema_sql} AND c.table_name = %(table)s "
        "ORDER BY c.ordinal_position", params).fetchall()
    columns = {name: _PG_KINDS.get(data_type) or _PG_KINDS.get(udt, "other") for name, data_type, udt, _ in rows}
    types = {name: (udt if data_type == "USER-DEFINED" else data_type) for name, data_type, udt, _ in rows}
    pk = [name for name, _, _, is_pk in rows if is_pk]
    line_column = pk[0] if len(pk) == 1 and columns[pk[0]] == "integer" else None
    return _check_columns(loc, columns, types, line_column)


def _day(seconds: float, days: int) -> str:
    """The UTC day ``days`` after ``seconds``, kept within years 1-9999 (a bound at the edge of the range)."""
    try:
        return (datetime.fromtimestamp(seconds, timezone.utc) + timedelta(days=days)).date().isoformat()
    except (OverflowError, ValueError, OSError):
        return "0001-01-01" if days < 0 else "9999-12-31T99"   # sorts after every ISO time of year 9999


def _quote(name: str) -> str:
    """An SQL identifier in double quotes (PostgreSQL, SQLite, MS SQL)."""
    return '"' + name.replace('"', '""') + '"'


def build_select(loc: BankLocation, info: TableInfo, since: float | None, until: float | None,
                 pyformat: bool = False, quote=_quote, model_version: str | None = None) -> tuple[str, dict[str, Any]]:
    """The SELECT of the ROW_COLUMNS in reading order, with ``since/until/model_version`` as a WHERE clause.

    A text timestamp is compared as text with a day of margin either side (a time zone shifts it
    by at most 14 hours); the reader then applies the exact bounds. Rows that are malformed
    whatever their time (no image, a timestamp that does not start with a digit, NULL) are always
    sent, so they are counted as in a file, where a record is checked before the filter.
    """
    table = (f"{quote(loc.schema)}." if loc.schema else "") + quote(loc.table)
    since_p, until_p, version_p = (("%(since)s", "%(until)s", "%(version)s") if pyformat
                                   else (":since", ":until", ":version"))
    cols = info.columns

    def col(name: str) -> str:
        if name not in cols:
            return "NULL"
        if cols[name] == "decimal" and loc.backend == "postgresql":  # NUMERIC would come back as Decimal
            return f"CAST({quote(name)} AS DOUBLE PRECISION)"
        if cols[name] in ("datetime", "datetimetz") and loc.backend == "postgresql":  # as ISO 8601 text
            utc = " AT TIME ZONE 'UTC'" if cols[name] == "datetimetz" else ""
            moment = f"{quote(name)}{utc}"
            # the era too (to_char writes 0044 BC as 0044, which would read as AD) and infinity as such
            # (to_char gives NULL, a "missing" timestamp): both are out of range for the reader
            return (f"""CASE WHEN isfinite({moment}) THEN to_char({moment}, 'YYYY-MM-DD"T"HH24:MI:SS.US"""
                    f"""{'"Z"' if utc else ''}') || CASE WHEN to_char({moment}, 'BC') = 'BC' THEN ' BC' ELSE '' END"""
                    f" ELSE ({moment})::text END")
        return quote(name)

    line = info.line_column
    line_sql = ("rowid" if line == "rowid" else quote(line)) if line else "NULL"
    sql = f"SELECT {', '.join([line_sql] + [col(c) for c in ROW_COLUMNS[1:]])} FROM {table}"
    params: dict[str, Any] = {}
    ts = quote("timestamp")
    no_image = f"{quote('image')} IS NULL OR {quote('image')} = ''"
    if since is not None or until is not None or model_version is not None:
        parts = []
        if model_version is not None:  # a text column compares as text; other kinds are checked after
            if cols.get("model_version") == "text":
                parts.append(f"{quote('model_version')} = {version_p}")
                params["version"] = model_version
            else:
                parts.append("1 = 1")
        if cols["timestamp"] in ("datetime", "datetimetz"):
            def bound(seconds: float) -> datetime:
                moment = datetime.fromtimestamp(seconds, timezone.utc)
                return moment if cols["timestamp"] == "datetimetz" else moment.replace(tzinfo=None)

            if since is not None:
                parts.append(f"{ts} >= {since_p}")
                params["since"] = bound(since)
            if until is not None:
                parts.append(f"{ts} <= {until_p}")
                params["until"] = bound(until)
            sql += f" WHERE ({' AND '.join(parts)}) OR {ts} IS NULL OR {no_image}"
        else:
            text_ts = f'{ts} COLLATE "C"' if loc.backend == "postgresql" else ts  # byte order, as the index
            if since is not None:
                parts.append(f"{text_ts} >= {since_p}")
                params["since"] = _day(since, -1)
            if until is not None:
                parts.append(f"{text_ts} < {until_p}")
                params["until"] = _day(until, 2)
            sql += (f" WHERE ({' AND '.join(parts)}) OR {ts} IS NULL OR {text_ts} < '0' OR {text_ts} >= ':' "
                    f"OR {no_image}")
    if line:
        sql += f" ORDER BY {line_sql}"
    else:  # no key (a VIEW, a table without one): a record's rows must still come together, or it counts twice
        sql += " ORDER BY " + ", ".join(quote(c) for c in ("timestamp", "image", "model_version") if c in cols)
    return sql, params


def _warn_no_key(loc: BankLocation, info: TableInfo) -> None:
    if info.line_column is None:
        logger.warning("%s: table '%s' has no integer primary key (a VIEW has none); rows are read ordered by "
                       "timestamp, image and model version, and reported by that row number (add an id column, "
                       "see memory-bank/README.md)", loc.shown, loc.table)


def read_rows(location: str, since: float | None = None, until: float | None = None,
              model_version: str | None = None, chunk_rows: int | None = None):
    """The rows (after the WHERE clause) as frames of ROW_COLUMNS: one, or about ``chunk_rows`` at a time."""
    loc = parse_url(location)
    read = _postgres_rows if loc.backend == "postgresql" else _generic_rows
    counted = 0
    for frame in read(loc, since, until, model_version, chunk_rows):
        frame.columns = list(ROW_COLUMNS)
        if frame["line"].isna().all():  # no primary key: the row number in reading order
            frame["line"] = range(counted + 1, counted + len(frame) + 1)
        counted += len(frame)
        yield frame


def _postgres_rows(loc: BankLocation, since: float | None, until: float | None, model_version: str | None,
                   chunk_rows: int | None):
    """``COPY (SELECT ...) TO STDOUT`` (read-only), spooled to a temporary file, parsed by pyarrow's CSV
    reader (whole or block by block); the WHERE clause's values are bound by psycopg, never pasted."""
    import tempfile

    import pandas as pd
    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv

    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": APPLICATION, **{
        k: v for k, v in (("host", loc.host), ("port", loc.port), ("user", loc.username), ("password", loc.password),
                          ("dbname", loc.database)) if v}, **loc.query}
    try:
        con = psycopg.connect(**kwargs)
    except (psycopg.Error, ValueError) as exc:
        raise database_error(loc, exc) from None
    spool = tempfile.TemporaryFile()
    try:
        con.read_only = True  # the analyzer never writes the plant's database
        info = _inspect_postgres(con, loc)
        _warn_no_key(loc, info)
        sql, params = build_select(loc, info, since, until, pyformat=True, model_version=model_version)
        logger.debug("memory bank query: %s %s", sql, params)
        with con.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)", params) as copy:
            for data in copy:
                spool.write(data)
    except psycopg.Error as exc:
        spool.close()
        raise database_error(loc, exc) from None
    finally:
        con.close()
    with spool:
        if spool.tell() == 0:  # an empty table (or window)
            yield pd.DataFrame({c: pd.Series([], dtype=object) for c in ROW_COLUMNS})
            return
        spool.seek(0)
        text = {c: pa.string() for c in ROW_COLUMNS if c in TEXT_COLUMNS + ("timestamp",)}
        read = pacsv.ReadOptions(column_names=list(ROW_COLUMNS), **({"block_size": max(1 << 16, chunk_rows * 80)}
                                                                   if chunk_rows else {}))
        types = text if chunk_rows is None else {c: text.get(c, pa.float64()) for c in ROW_COLUMNS}
        convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
        if chunk_rows is None:  # else block by block, every type given (a block's guess may not fit the next)
            yield pacsv.read_csv(spool, read_options=read, convert_options=convert).to_pandas(split_blocks=True,
                                                                                              self_destruct=True)
        else:
            for batch in pacsv.open_csv(spool, read_options=read, convert_options=convert):
                yield batch.to_pandas(split_blocks=True, self_destruct=True)


def _generic_rows(loc: BankLocation, since: float | None, until: float | None, model_version: str | None,
                  chunk_rows: int | None):
    """Any other SQLAlchemy dialect (SQLite, MS SQL): ``pandas.read_sql`` of the same SELECT."""
    import pandas as pd
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine_for(loc)
    try:
        with engine.connect() as conn:
            info = inspect_table(conn, loc)
            _warn_no_key(loc, info)
            conn.rollback()
            sql, params = build_select(loc, info, since, until, quote=engine.dialect.identifier_preparer.quote,
                                       model_version=model_version)
            logger.debug("memory bank query: %s %s", sql, params)
            got = pd.read_sql_query(text(sql), conn.execution_options(stream_results=chunk_rows is not None),
                                    params=params, chunksize=chunk_rows)
            yield from ([got] if chunk_rows is None else got)
    except SQLAlchemyError as exc:
        raise database_error(loc, exc) from None
    finally:
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
            inspect_table(conn, self.loc)  # same checks as the reader: one line if wrong
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
