"""Shared fixtures: ``postgres_url``, a PostgreSQL database for multi-worker study tests, and
``one_torch_thread``."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / ".ci" / "postgres.env"  # written by .ci/postgres.sh
URL_VAR, SKIP_VAR = "HWSBS_TEST_POSTGRES_URL", "HWSBS_TEST_POSTGRES_SKIP"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``): on
    two busy cores one thread is several times faster than two competing ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env_file() -> dict[str, str]:
    if not ENV_FILE.is_file():
        return {}
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _unreachable(url: str) -> str | None:
    """Why ``url`` cannot be used (None: it can)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return str(exc).splitlines()[0][:200]
    return None


def _masked(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``$HWSBS_TEST_POSTGRES_URL``, else the URL in .ci/postgres.env, else one from running
    .ci/postgres.sh (installs and starts a local server where it can); skips saying why not."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL: psycopg2 is not installed (pip install -e '.[test]')")
    url = os.environ.get(URL_VAR)
    if url:  # set on purpose: a server that is down is a failure, not a skip
        problem = _unreachable(url)
        if problem:
            pytest.fail(f"{URL_VAR}={_masked(url)} is set but unusable: {problem}")
        return url
    known = _env_file()
    if SKIP_VAR in known:  # .ci/postgres.sh already found that no server can start here
        pytest.skip(f"PostgreSQL: {known[SKIP_VAR]} (from {ENV_FILE.relative_to(REPO)})")
    if URL_VAR in known and _unreachable(known[URL_VAR]) is None:
        return known[URL_VAR]
    try:
        proc = subprocess.run(["bash", str(REPO / ".ci" / "postgres.sh")], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"PostgreSQL: .ci/postgres.sh did not run ({exc})")
    known = _env_file()
    if URL_VAR not in known:
        pytest.skip(
            f"PostgreSQL: {known.get(SKIP_VAR) or proc.stderr.strip()[-300:] or '.ci/postgres.sh wrote no URL'}"
        )
    problem = _unreachable(known[URL_VAR])
    if problem:
        pytest.skip(f"PostgreSQL: the server .ci/postgres.sh started is unusable: {problem}")
    return known[URL_VAR]
