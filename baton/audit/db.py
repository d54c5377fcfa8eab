"""Engine and session creation for the audit database, in one place; migrations run on open.

SQLite (the default, `sqlite:///.baton/audit.db`) and PostgreSQL (`postgresql+psycopg://...`;
a bare `postgresql://` URL gets the psycopg 3 driver) share one schema, built by Alembic.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import Session, create_engine

from baton.errors import AuditError, ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Default the PostgreSQL driver to psycopg 3; reject anything but SQLite and PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"audit.database_url {url!r} is not a database URL: {e}") from e
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"audit.database_url {url!r}: only sqlite:///PATH and postgresql+psycopg://... are "
            "supported"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (below).
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(connection):
        # IMMEDIATE takes the write lock up front: two writers queue instead of one failing
        # with "database is locked" when it upgrades a read to a write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def get_engine(url: str, migrate: bool = True) -> Engine:
    """One engine per URL per process; the schema is brought to the newest migration first."""
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = _sqlite_engine(url)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            if migrate:
                upgrade(engine)
            _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests that drop databases need this)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to `revision` on this engine's database (idempotent)."""
    from alembic import command

    config = alembic_config(engine)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except OperationalError as e:
        raise AuditError(
            f"cannot open the audit database {engine.url.render_as_string(hide_password=True)}: "
            f"{e.orig}. Check audit.database_url and that the server is running."
        ) from e


@contextmanager
def session_scope(engine: Engine):
    """A session whose transaction commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
