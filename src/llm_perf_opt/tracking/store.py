"""Getting a tracking store ready before anything is measured or uploaded.

- HTTP limits: MLflow retries a failed request 7 times with exponential backoff (about 4 minutes when
  the server refuses connections) and waits up to 120 s per attempt (20 minutes for a host that drops
  packets). A tracking server that dies mid-run must not hold a profile for minutes, so unless the
  user set them, this process uses `HTTP_LIMITS` (2 retries, 1 s backoff factor, 15 s per attempt:
  about 3 s for a refused connection, under a minute for a silent host).
- A server (http/https URI) is asked `GET <uri>/health` once, with a short timeout and no retries.
- A SQLite store is created, migrated and given its experiment under a file lock next to the database
  (`<db>.lock`): MLflow's schema migration and `set_experiment` of a new experiment are not safe when
  several processes start at once against a new store. Runs then log concurrently.

A store that is not usable raises `StoreUnavailable`, whose message is one line (the reason).
"""

from __future__ import annotations

import os
from pathlib import Path

HTTP_LIMITS = {  # MLflow's defaults: 7 retries, backoff factor 2, 120 s per attempt
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
HEALTH_TIMEOUT_S = 3.0
LOCK_TIMEOUT_S = 120.0


class StoreUnavailable(Exception):
    """The tracking store cannot be used; the message is one line saying why."""


def limit_http_retries() -> dict[str, str]:
    """Set HTTP_LIMITS in this process's environment where the user has not; returns what was set."""
    applied = {}
    for name, value in HTTP_LIMITS.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for other URIs and in-memory databases)."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).absolute()


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """`GET <uri>/health` once (MLflow's server answers OK), with the tracking credentials and TLS settings.

    A connection error, a timeout or a 5xx answer (a proxy in front of a stopped server) raises
    StoreUnavailable. Any other answer means something is listening: the MLflow calls themselves decide.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri.rstrip("/")), "/health", "GET", max_retries=0,
                                backoff_factor=0, backoff_jitter=0, timeout=timeout, raise_on_status=False)
    except Exception as exc:  # MlflowException wrapping the requests/urllib3 error
        raise StoreUnavailable(_reason(exc)) from exc
    if response.status_code >= 500:
        raise StoreUnavailable(f"GET /health answered HTTP {response.status_code}")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a failed request, shortly: 'Connection refused', 'timed out', ..."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out",
                   "Temporary failure in name resolution", "Network is unreachable", "CERTIFICATE_VERIFY_FAILED"):
        if marker in text:
            return marker
    line = _first_line(exc)
    return line if len(line) <= 200 else line[:197] + "..."


def prepare_sqlite(uri: str, experiment: str | None, timeout: float = LOCK_TIMEOUT_S) -> str | None:
    """Create and migrate the SQLite store of `uri` and get-or-create `experiment`, holding `<db>.lock`.

    Returns the experiment id (None when no experiment was asked for). Makes the database's directory
    first. A store that cannot be set up (the directory cannot be made, the lock is held too long, the
    migration fails) raises StoreUnavailable; an experiment MLflow refuses (a deleted one) raises
    MLflow's own error.
    """
    import filelock

    database = sqlite_path(uri)
    if database is None:  # in-memory: one process, nothing to serialise
        return _prepare(uri, experiment)
    lock = lock_path(database)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(lock), timeout=timeout):
            return _prepare(uri, experiment)
    except filelock.Timeout as exc:
        raise StoreUnavailable(f"{lock} stayed locked for over {timeout:g} s (another process is setting up this "
                               "store; if none is, remove the lock file)") from exc
    except OSError as exc:
        raise StoreUnavailable(_first_line(exc)) from exc


def _prepare(uri: str, experiment: str | None) -> str | None:
    import mlflow

    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)  # builds the store: creates/migrates the schema
    except Exception as exc:
        raise StoreUnavailable(_first_line(exc)) from exc
    if experiment is None:
        return None
    mlflow.set_tracking_uri(uri)
    return mlflow.set_experiment(experiment).experiment_id


def prepare_store(uri: str, experiment: str | None) -> str | None:
    """Make the store at `uri` ready (see the module's docstring); StoreUnavailable when it is not.

    Returns the experiment id for SQLite stores (created under the lock), None for others (the caller
    sets the experiment itself, as before).
    """
    limit_http_retries()
    if is_http(uri):
        check_server(uri)
        return None
    if uri.lower().startswith("sqlite:"):
        return prepare_sqlite(uri, experiment)
    return None


def unavailable_message(uri: str, reason: str) -> str:
    what = "tracking server" if is_http(uri) else "tracking store"
    return f"MLflow {what} {uri} is unreachable ({reason}): measuring anyway; the run directory is the record"
