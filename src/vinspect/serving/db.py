"""The inspection log: SQLAlchemy tables, explicit numbered migrations, and the queries the service needs.

Any SQLAlchemy URL works; two are tested: an embedded SQLite file (the default) and PostgreSQL through
psycopg 3 (``postgresql+psycopg://user@host:port/db``; a bare ``postgresql://`` URL is given that driver).

Concurrency:
- SQLite runs in WAL mode (readers never block the writer) with a busy timeout; every write transaction
  starts with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade, and writers of one
  process queue on a lock instead of polling SQLite's busy handler.  Several processes may share the file.
- PostgreSQL needs nothing special for inserts; migrations take an advisory lock so two services starting
  together apply each migration once.

Migrations: ``MIGRATIONS`` is an ordered list of ``(version, description, function)``.  On start the
service reads ``vinspect_schema`` (one row per applied migration) and applies the missing ones, each in
its own transaction together with its row.  To change the schema, append a migration; never edit one that
has been released.  Times are stored as naive UTC.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy import (BigInteger, Column, DateTime, Float, ForeignKey, Index, Integer, LargeBinary,
                        MetaData, String, Table, Text, create_engine, event, func, select, text, update)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError

from ..errors import BadInputError

from .limits import DEFAULT_DB_FILE  # noqa: E402,F401 (re-exported)
STATUS_OK = "ok"
STATUS_REJECTED = "rejected"

metadata = MetaData()

_id_type = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

schema_table = Table(
    "vinspect_schema", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime, nullable=False),
)

inspections = Table(
    "inspections", metadata,
    Column("id", _id_type, primary_key=True, autoincrement=True),
    Column("created_at", DateTime, nullable=False),
    Column("status", String(16), nullable=False),          # ok | rejected
    Column("http_status", Integer, nullable=False),
    Column("label", String(200)),
    Column("score", Float),                                # probability of the label
    Column("probabilities", Text),                         # JSON {class: p}
    Column("part_id", String(200)),
    Column("station", String(200)),
    Column("request_id", String(200)),                     # client's X-Request-Id (idempotent retries)
    Column("model_name", String(200)),
    Column("model_version", String(100)),
    Column("model_sha256", String(64)),
    Column("latency_ms", Float),
    Column("image_sha256", String(64)),
    Column("image_bytes", BigInteger),
    Column("content_type", String(200)),
    Column("image_format", String(20)),
    Column("width", Integer),
    Column("height", Integer),
    Column("filename", String(500)),
    Column("client", String(100)),
    Column("error_code", String(50)),
    Column("error", Text),
)

images = Table(
    "inspection_images", metadata,
    Column("inspection_id", _id_type, ForeignKey("inspections.id", ondelete="CASCADE"), primary_key=True,
           autoincrement=False),
    Column("media_type", String(100), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("heatmap", LargeBinary),
    Column("heatmap_method", String(50)),
    Column("heatmap_model_sha256", String(64)),
)

_indexes = [
    Index("ix_inspections_created", inspections.c.created_at),
    Index("ix_inspections_status_created", inspections.c.status, inspections.c.created_at),
    Index("ix_inspections_label_created", inspections.c.label, inspections.c.created_at),
    Index("ix_inspections_station", inspections.c.station),
    Index("ix_inspections_part", inspections.c.part_id),
    # one accepted inspection per client request id; rejected attempts may repeat it
    Index("ux_inspections_request_ok", inspections.c.request_id, unique=True,
          sqlite_where=inspections.c.status == STATUS_OK, postgresql_where=inspections.c.status == STATUS_OK),
]


def _m1_initial(conn: Connection) -> None:
    metadata.create_all(conn, tables=[inspections, images])  # the indexes are created with their tables


MIGRATIONS = [
    (1, "inspections, inspection_images and their indexes", _m1_initial),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(dt: datetime | None) -> str | None:
    """Naive UTC from the database -> ISO 8601 with the offset."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc).isoformat(timespec="milliseconds")


def normalise_url(url: str | None) -> str:
    """The default SQLite file, and psycopg 3 for bare postgresql:// URLs."""
    if not url:
        return f"sqlite:///{DEFAULT_DB_FILE}"
    if "://" not in url:  # a plain path: an SQLite file
        return f"sqlite:///{url}"
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def safe_url(url: str | URL) -> str:
    try:
        return make_url(str(url)).render_as_string(hide_password=True) if isinstance(url, str) else \
            url.render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


class Database:
    """The inspection log behind one SQLAlchemy engine (thread-safe)."""

    def __init__(self, url: str | None = None, pool_size: int = 8, busy_timeout_s: float = 30.0):
        self.url_text = normalise_url(url)
        try:
            self.url = make_url(self.url_text)
        except ArgumentError:
            raise BadInputError(f"--db {url!r}: not an SQLAlchemy URL (e.g. sqlite:///inspections.sqlite3 or "
                                f"postgresql+psycopg://user@127.0.0.1:5432/vinspect)") from None
        self.dialect = self.url.get_backend_name()
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        try:
            if self.dialect == "sqlite":
                if self.url.database in (None, "", ":memory:"):
                    raise BadInputError("--db: an in-memory SQLite database cannot be shared by the service's "
                                        "threads; give a file, e.g. sqlite:///inspections.sqlite3")
                self.engine = create_engine(self.url, connect_args={"check_same_thread": False,
                                                                    "timeout": busy_timeout_s},
                                            pool_size=pool_size, max_overflow=pool_size)
                self._sqlite_setup(busy_timeout_s)
            else:
                self.engine = create_engine(self.url, pool_size=pool_size, max_overflow=2 * pool_size,
                                            pool_pre_ping=True)
        except NoSuchModuleError as e:
            raise BadInputError(f"--db {safe_url(self.url)}: no SQLAlchemy driver for it ({e}); "
                                f"PostgreSQL: postgresql+psycopg://... with psycopg installed") from None
        except ModuleNotFoundError as e:
            raise BadInputError(f"--db {safe_url(self.url)}: its database driver is not installed ({e})") from None

    # -- set-up ---------------------------------------------------------------------------------------

    def _sqlite_setup(self, busy_timeout_s: float) -> None:
        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), not pysqlite
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _begin(conn):
            immediate = conn.get_execution_options().get("vinspect_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def describe(self) -> str:
        return safe_url(self.url)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (serialised per process on SQLite, ``BEGIN IMMEDIATE``)."""
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(vinspect_write=True)
                with conn.begin():
                    yield conn
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def migrate(self) -> list[int]:
        """Create the schema or bring it up to date; returns the versions applied now."""
        applied: list[int] = []
        try:
            with self._write() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(7201526)"))  # one migrator at a time
                metadata.create_all(conn, tables=[schema_table])
                have = {r[0] for r in conn.execute(select(schema_table.c.version))}
            for version, description, fn in MIGRATIONS:
                if version in have:
                    continue
                with self._write() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(7201526)"))
                    if conn.execute(select(schema_table.c.version).where(schema_table.c.version == version)).first():
                        continue  # another process applied it meanwhile
                    fn(conn)
                    conn.execute(schema_table.insert().values(version=version, description=description,
                                                              applied_at=utcnow()))
                applied.append(version)
            newest = max(have | set(applied)) if have or applied else 0
        except OperationalError as e:
            raise BadInputError(f"--db {self.describe()}: cannot open the database "
                                f"({str(e.orig).strip().splitlines()[0] if e.orig else e})") from None
        if newest > SCHEMA_VERSION:
            raise BadInputError(f"--db {self.describe()}: schema version {newest} is newer than this vinspect "
                                f"knows ({SCHEMA_VERSION}); upgrade vinspect")
        return applied

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(schema_table.c.version))).scalar() or 0)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------------------------------

    def insert(self, row: dict[str, Any], image: bytes | None = None, media_type: str | None = None) -> int:
        """Insert one inspection (and its image) in one transaction; returns its id.

        Raises :class:`DuplicateRequest` when an accepted inspection with the same ``request_id`` exists.
        """
        row = dict(row)
        if isinstance(row.get("probabilities"), dict):
            row["probabilities"] = json.dumps(row["probabilities"])
        try:
            with self._write() as conn:
                new_id = conn.execute(inspections.insert().values(**row)).inserted_primary_key[0]
                if image is not None:
                    conn.execute(images.insert().values(inspection_id=new_id, media_type=media_type or
                                                        "application/octet-stream", data=image))
        except IntegrityError:
            if row.get("request_id") and row.get("status") == STATUS_OK:
                existing = self.find_request(row["request_id"])
                if existing is not None:
                    raise DuplicateRequest(existing) from None
            raise
        return int(new_id)

    def store_heatmap(self, inspection_id: int, png: bytes, method: str, model_sha256: str) -> None:
        with self._write() as conn:
            conn.execute(update(images).where(images.c.inspection_id == inspection_id)
                         .values(heatmap=png, heatmap_method=method, heatmap_model_sha256=model_sha256))

    # -- reads ----------------------------------------------------------------------------------------

    def get(self, inspection_id: int) -> dict | None:
        with self._read() as conn:
            r = conn.execute(select(inspections).where(inspections.c.id == inspection_id)).mappings().first()
        return row_dict(r) if r is not None else None

    def find_request(self, request_id: str) -> dict | None:
        with self._read() as conn:
            r = conn.execute(select(inspections).where(inspections.c.request_id == request_id,
                                                       inspections.c.status == STATUS_OK)).mappings().first()
        return row_dict(r) if r is not None else None

    def image(self, inspection_id: int) -> dict | None:
        with self._read() as conn:
            r = conn.execute(select(images).where(images.c.inspection_id == inspection_id)).mappings().first()
        return dict(r) if r is not None else None

    def _filters(self, status=STATUS_OK, labels=None, not_labels=None, station=None, part_id=None,
                 since=None, until=None, after_id=None) -> list:
        conds = []
        if status and status != "all":
            conds.append(inspections.c.status == status)
        if labels:
            conds.append(inspections.c.label.in_(list(labels)))
        if not_labels:
            conds.append(inspections.c.label.not_in(list(not_labels)))
        if station:
            conds.append(inspections.c.station == station)
        if part_id:
            conds.append(inspections.c.part_id == part_id)
        if since is not None:
            conds.append(inspections.c.created_at >= since)
        if until is not None:
            conds.append(inspections.c.created_at < until)
        if after_id is not None:
            conds.append(inspections.c.id > after_id)
        return conds

    def list(self, limit: int = 50, offset: int = 0, **filters) -> tuple[list[dict], int]:
        """Newest first; returns ``(rows, total matching)``."""
        conds = self._filters(**filters)
        with self._read() as conn:
            q = select(inspections).where(*conds).order_by(inspections.c.created_at.desc(),
                                                           inspections.c.id.desc()).limit(limit).offset(offset)
            rows = [row_dict(r) for r in conn.execute(q).mappings()]
            total = int(conn.execute(select(func.count()).select_from(inspections).where(*conds)).scalar() or 0)
        return rows, total

    def iter_all(self, batch: int = 1000, **filters) -> Iterator[dict]:
        """Oldest first, in pages by id (bounded memory for any size of log)."""
        last = None
        while True:
            conds = self._filters(after_id=last, **filters)
            with self._read() as conn:
                rows = [row_dict(r) for r in conn.execute(
                    select(inspections).where(*conds).order_by(inspections.c.id).limit(batch)).mappings()]
            if not rows:
                return
            yield from rows
            last = rows[-1]["id"]

    def counts(self, since=None, until=None, station=None) -> dict:
        """``{"by_label": {label: n}, "ok": n, "rejected": n}`` over a time window."""
        conds = self._filters(status="all", since=since, until=until, station=station)
        with self._read() as conn:
            by_status = dict(conn.execute(select(inspections.c.status, func.count()).where(*conds)
                                          .group_by(inspections.c.status)).all())
            by_label = dict(conn.execute(select(inspections.c.label, func.count())
                                         .where(*conds, inspections.c.status == STATUS_OK)
                                         .group_by(inspections.c.label)).all())
        return {"by_label": {str(k): int(v) for k, v in by_label.items()},
                "ok": int(by_status.get(STATUS_OK, 0)), "rejected": int(by_status.get(STATUS_REJECTED, 0))}

    def count_by(self, column: str, **filters) -> dict:
        conds = self._filters(**filters)
        col = inspections.c[column]
        with self._read() as conn:
            return {k: int(v) for k, v in conn.execute(select(col, func.count()).where(*conds).group_by(col)).all()}


class DuplicateRequest(Exception):
    """An accepted inspection with the same client request id is already in the log."""

    def __init__(self, existing: dict):
        super().__init__(f"request id {existing.get('request_id')!r} already logged as inspection {existing['id']}")
        self.existing = existing


def row_dict(r) -> dict:
    d = dict(r)
    p = d.get("probabilities")
    if isinstance(p, str):
        try:
            d["probabilities"] = json.loads(p)
        except json.JSONDecodeError:
            pass
    return d


def open_database(url: str | None) -> Database:
    """Open and migrate; bad URLs and unreachable servers are :class:`BadInputError`."""
    db = Database(url)
    try:
        db.migrate()
    except BadInputError:
        db.close()
        raise
    except SQLAlchemyError as e:
        db.close()
        raise BadInputError(f"--db {db.describe()}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return db


_REL = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str | None, what: str = "since", now: datetime | None = None) -> datetime | None:
    """ISO 8601 (``2025-03-01``, ``2025-03-01T08:00``, ``...Z``, ``...+02:00``; naive times are UTC) or a
    relative time before now (``30m``, ``12h``, ``7d``, ``2w``) -> naive UTC.  ValueError names the problem."""
    import re
    from datetime import timedelta

    if value is None or str(value).strip() == "":
        return None
    s = str(value).strip()
    m = re.fullmatch(r"(\d+)\s*([smhdw])", s)
    if m:
        try:
            return (now or utcnow()) - timedelta(**{_REL[m.group(2)]: int(m.group(1))})
        except (OverflowError, ValueError):
            raise ValueError(f"{what} {value!r}: reaches before the year 1") from None
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise ValueError(f"{what} {value!r}: not an ISO 8601 time (2025-03-01, 2025-03-01T08:00:00Z, "
                         f"...+02:00) nor a relative one (30m, 12h, 7d)") from None
    if dt.tzinfo is not None:
        try:
            dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
        except (OverflowError, ValueError):
            raise ValueError(f"{what} {value!r}: outside the years 1 to 9999 in UTC") from None
    return dt
