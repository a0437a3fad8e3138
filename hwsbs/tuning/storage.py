"""Where studies live: storage URLs (SQLite by default, PostgreSQL/MySQL, journal files), heartbeats."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial

from hwsbs.errors import ConfigError

#: Study user attribute holding what hwsbs needs to continue and report a study.
STUDY_ATTR = "hwsbs"

__all__ = [
    "STUDY_ATTR",
    "open_storage",
    "load_study",
    "resolve_storage_url",
    "mask_url",
    "heartbeat_settings",
    "study_dir_name",
    "HEARTBEAT_INTERVAL_S",
    "GRACE_PERIOD_S",
    "HEARTBEAT_ENV",
]

HEARTBEAT_INTERVAL_S = 20  # a running trial's worker writes a heartbeat this often (SQL storages)
GRACE_PERIOD_S = 60  # a RUNNING trial without heartbeat for this long is marked FAIL
#: Environment variables overriding the two (whole seconds; e.g. short ones in tests).
HEARTBEAT_ENV = ("HWSBS_HEARTBEAT_INTERVAL_S", "HWSBS_HEARTBEAT_GRACE_S")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and reports)."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: 20 and 60, or ``HEARTBEAT_ENV`` when set.

    Raises:
        ConfigError: a value that is not a whole number >= 1, or a grace period below the interval.
    """
    values = []
    for var, default in zip(HEARTBEAT_ENV, (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S)):
        text = os.environ.get(var, "").strip()
        value = int(text) if text.isdigit() else (default if not text else 0)
        if value < 1:
            raise ConfigError(f"{var}={text!r}: expected a whole number of seconds >= 1")
        values.append(value)
    interval, grace = values
    if grace < interval:
        raise ConfigError(
            f"{HEARTBEAT_ENV[1]}: the grace period ({grace} s) must be at least the heartbeat interval "
            f"({interval} s), or live trials would be failed between two heartbeats"
        )
    return interval, grace


def study_dir_name(name: str) -> str:
    """A study name as one safe path component (``runs/<this>``): no separators, never ``..``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "study"


#: SQLAlchemy drivers per database, in order of preference: (driver name, module, pip package).
#: A URL without a driver (``postgresql://``) gets the first one installed, so the message of a
#: failure names the module actually used (SQLAlchemy's own default changes between versions:
#: 2.1 picks psycopg 3 for ``postgresql://`` even where only psycopg2 is installed).
SQL_DRIVERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "postgresql": (
        ("psycopg2", "psycopg2", "psycopg2-binary"),
        ("psycopg", "psycopg", "psycopg[binary]"),
        ("pg8000", "pg8000", "pg8000"),
    ),
    "mysql": (
        ("mysqldb", "MySQLdb", "mysqlclient"),
        ("pymysql", "pymysql", "PyMySQL"),
        ("mysqlconnector", "mysql.connector", "mysql-connector-python"),
    ),
}
_SCHEME_ALIASES = {"postgres": "postgresql"}  # Heroku-style URLs; SQLAlchemy refuses the alias


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package (mysql.connector without mysql)
        return False


def resolve_storage_url(url: str) -> tuple[str, str | None]:
    """``(url with an explicit driver, the driver's module)`` for PostgreSQL and MySQL URLs.

    ``postgresql://...`` becomes ``postgresql+psycopg2://...`` where psycopg2 is installed (else
    psycopg, else pg8000); ``mysql://`` likewise (MySQLdb, PyMySQL, mysql-connector). Other URLs
    come back unchanged, with module None.

    Raises:
        ConfigError: the named driver, or every known driver of the database, is not installed
            (naming the modules tried and the package to install).
    """
    scheme, sep, rest = url.partition("://")
    backend, _, driver = scheme.partition("+")
    backend = _SCHEME_ALIASES.get(backend.lower(), backend.lower())
    if not sep or backend not in SQL_DRIVERS:
        return url, None
    choices = SQL_DRIVERS[backend]
    if driver:
        for name, module, pip in choices:
            if name == driver.lower():
                if not _installed(module):
                    raise ConfigError(
                        f"--storage {mask_url(url)}: the database driver module {module} is not "
                        f"installed (pip install {pip})"
                    )
                return f"{backend}+{driver}://{rest}", module
        return (f"{backend}+{driver}://{rest}", driver)  # a driver hwsbs does not know: SQLAlchemy tries it
    for name, module, _ in choices:
        if _installed(module):
            return f"{backend}+{name}://{rest}", module
    tried = ", ".join(module for _, module, _ in choices)
    raise ConfigError(
        f"--storage {mask_url(url)}: no {backend} driver is installed (tried the modules {tried}); "
        f"pip install {choices[0][2]}"
    )


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage from a URL, ``journal:PATH`` or a ``*.db`` path.

    SQL storages get a heartbeat, so a killed worker's RUNNING trial is marked FAIL once stale.

    Raises:
        ConfigError: an unknown form, a missing database driver, or an unreachable database.
    """
    if url.startswith("journal:"):
        path = url[len("journal:") :]
        if not path:
            raise ConfigError("--storage journal:PATH: the journal file path is missing")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    interval, grace = heartbeat_settings()  # checked before anything is created
    if "://" not in url:
        if not url.endswith((".db", ".sqlite", ".sqlite3")):
            raise ConfigError(
                f"--storage {url!r}: expected an Optuna storage URL (sqlite:///study.db, "
                "postgresql://..., mysql://...), journal:PATH or a .db file"
            )
        url = f"sqlite:///{Path(url).resolve()}"
    shown = mask_url(url)  # as given (messages add the driver)
    url, driver = resolve_storage_url(url)
    using = f" with driver {driver}" if driver else ""
    engine_kwargs = None
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait, not fail

    def record_lost(study: optuna.Study, trial: FrozenTrial) -> None:
        study.set_user_attr(f"lost:{trial.number}", f"worker stopped: no heartbeat for over {grace} s")

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=record_lost,
                )
        except ImportError as exc:
            raise ConfigError(f"--storage {shown}: database driver missing{using} ({exc})") from None
        except Exception as exc:
            # workers creating a new database together race on its schema: the loser retries
            racing = "IntegrityError" in type(exc).__name__ or "already exists" in str(exc)
            if attempt == 4 or not racing:
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"--storage {shown}: cannot open{using} ({detail})") from None
            time.sleep(0.2 + random.random() * (attempt + 1))
    raise AssertionError("unreachable")


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Open an existing hwsbs study (the only one in ``storage`` when no name is given)."""
    local = (
        storage[len("journal:") :]
        if storage.startswith("journal:")
        else (
            storage[len("sqlite:///") :]
            if storage.startswith("sqlite:///")
            else storage
            if "://" not in storage
            else None
        )
    )
    if local is not None and local != ":memory:" and not Path(local).is_file():
        raise ConfigError(f"--storage {storage}: no such file")  # do not create an empty database
    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(
                f"--study-name: {mask_url(storage)} holds {len(names)} studies ({', '.join(names) or 'none'}); name one"
            )
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(
            f"--study-name {study_name}: no such study in {mask_url(storage)} (it has: {', '.join(names) or 'none'})"
        )
    study = optuna.load_study(study_name=study_name, storage=store, sampler=optuna.samplers.RandomSampler(seed=0))
    if STUDY_ATTR not in study.user_attrs:
        raise ConfigError(f"study {study_name} was not created by hwsbs tune/pareto")
    return study
