"""Throwaway servers for tests: a PostgreSQL cluster and a real `mlflow server` on it (the team set-up).

- `postgres_server()`: `initdb` a cluster in a temporary directory (trust authentication, its unix socket
  inside that directory, a free TCP port on 127.0.0.1), start it with `pg_ctl -w`, create a database,
  yield its SQLAlchemy URL (`postgresql+psycopg2://mlflow@127.0.0.1:<port>/mlflow`: the driver is named,
  since SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which the `team` extra does not
  install); always `pg_ctl stop -m fast` and remove the directory. PostgreSQL refuses to
  run as root: when this process is root, every PostgreSQL command runs as an unprivileged account
  (`postgres` when it exists, else `nobody`) through subprocess's user=/group= switch, and the
  directory (under the system's temp dir, not pytest's root-only one) is owned by that account.
- `mlflow_server(backend, artifacts)`: `mlflow server` on that store with proxied artifacts
  (`--serve-artifacts --artifacts-destination`), uvicorn with `--workers` processes, MLflow's job runner
  off unless asked for; waits for `GET /health`, yields `http://127.0.0.1:<port>`, always terminates the
  server's process group.
- `postgres_available()`: (True, "") or (False, why PostgreSQL cannot run here), for a skip.

No project imports: the helpers stand alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PG_USER = "mlflow"        # the cluster's superuser (initdb -U), the name in the URL
PG_DATABASE = "mlflow"
UNPRIVILEGED = ("postgres", "nobody")  # the account PostgreSQL runs as when this process is root
START_TIMEOUT_S = 120.0   # bounds, not measurements: a hung start fails instead of hanging the session
STOP_GRACE_S = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_pg_binary(name: str) -> str | None:
    """`name` (initdb, pg_ctl, createdb) on PATH, else in the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parts[-3].split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else None


def _pg_binaries() -> dict[str, str | None]:
    """initdb and pg_ctl from the same installation (pg_ctl's directory first), createdb beside them."""
    pg_ctl = find_pg_binary("pg_ctl")
    folder = Path(pg_ctl).resolve().parent if pg_ctl else None

    def beside(name: str) -> str | None:
        if folder is not None and (folder / name).is_file():
            return str(folder / name)
        return find_pg_binary(name)

    return {"pg_ctl": pg_ctl, "initdb": beside("initdb"), "createdb": beside("createdb")}


def _account() -> tuple[int, int, str] | None:
    """(uid, gid, name) of the unprivileged account to run PostgreSQL as; None when not root (run as is)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in UNPRIVILEGED:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid, name
    raise RuntimeError(f"running as root and none of the accounts {', '.join(UNPRIVILEGED)} exists: PostgreSQL "
                       "refuses to run as root")


def _as_account(account: tuple[int, int, str] | None) -> dict[str, Any]:
    """subprocess keyword arguments that run a command as `account` (nothing when not root)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    if account is None:
        return {"env": env}
    uid, gid, name = account
    return {"env": {**env, "USER": name, "LOGNAME": name, "HOME": "/tmp"}, "user": uid, "group": gid,
            "extra_groups": []}


def _driver_scheme() -> str | None:
    """The SQLAlchemy URL scheme for the installed PostgreSQL driver. SQLAlchemy 2.1 maps a bare
    `postgresql://` to psycopg 3, 2.0 to psycopg2; naming the driver works with either version."""
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2"
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg"
    return None


def postgres_available() -> tuple[bool, str]:
    """Whether a throwaway PostgreSQL can run here: (True, "") or (False, the reason)."""
    binaries = _pg_binaries()
    missing = [name for name in ("initdb", "pg_ctl") if not binaries[name]]
    if missing:
        return False, (f"PostgreSQL is not installed ({', '.join(missing)} not on PATH nor in "
                       "/usr/lib/postgresql/*/bin)")
    if _driver_scheme() is None:
        return False, "no PostgreSQL driver for SQLAlchemy (pip install -e '.[team]' installs psycopg2-binary)"
    try:
        account = _account()
        result = subprocess.run([binaries["initdb"], "--version"], capture_output=True, text=True, timeout=60,
                                **_as_account(account))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run initdb: {exc}"
    if result.returncode != 0:
        return False, f"initdb --version failed: {(result.stderr or result.stdout).strip()[:300]}"
    return True, ""


def _check(result: subprocess.CompletedProcess, what: str, log: Path | None = None) -> None:
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n{tail}")


def _temp_dir(account: tuple[int, int, str] | None) -> Path:
    """A fresh directory the PostgreSQL account owns, under the system temp dir (traversable by that account)."""
    root = Path(tempfile.mkdtemp(prefix="llm-perf-opt-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    if account is not None:
        os.chown(root, account[0], account[1])
    return root


def _initdb_and_start(bins: dict[str, str | None], root: Path, port: int, run_as: dict[str, Any]) -> None:
    data, log = root / "data", root / "postgres.log"
    _check(subprocess.run([bins["initdb"], "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                           "--locale=C", "--no-sync"], capture_output=True, text=True, timeout=START_TIMEOUT_S,
                          cwd=root, **run_as), "initdb")
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{root}' "
               "-c fsync=off -c max_connections=200")
    _check(subprocess.run([bins["pg_ctl"], "-D", str(data), "-l", str(log), "-w", "-t", str(int(START_TIMEOUT_S)),
                           "-o", options, "start"], capture_output=True, text=True, timeout=START_TIMEOUT_S + 30,
                          cwd=root, **run_as), "pg_ctl start", log)
    createdb = [bins["createdb"], "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DATABASE]
    _check(subprocess.run(createdb, capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=root, **run_as),
           "createdb", log)


def _stop(bins: dict[str, str | None], root: Path, run_as: dict[str, Any]) -> None:
    data = root / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run([bins["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "-t", str(int(STOP_GRACE_S * 4)),
                        "stop"], capture_output=True, text=True, timeout=STOP_GRACE_S * 6, cwd="/", **run_as)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running throwaway PostgreSQL; yields `postgresql+<driver>://mlflow@127.0.0.1:<port>/mlflow`."""
    available, reason = postgres_available()
    if not available:
        raise RuntimeError(reason)
    bins, account = _pg_binaries(), _account()
    run_as = _as_account(account)
    root = _temp_dir(account)
    try:
        port = free_port()
        _initdb_and_start(bins, root, port, run_as)
        yield f"{_driver_scheme()}://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"
    finally:
        try:
            _stop(bins, root, run_as)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def server_env(jobs: bool = False) -> dict[str, str]:
    """This environment without MLflow's variables (a server must not inherit a test's run). `jobs=False`
    turns off MLflow's job runner (huey consumers for GenAI scorers, 8 more processes the profiler never
    uses: on a small test machine they only compete for the CPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if jobs else "false"
    return env


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Until `GET <url>/health` answers 200; RuntimeError with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {process.returncode} before answering /health:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server at {url} did not answer /health within {timeout:g} s:\n"
                       f"{log.read_text(errors='replace')[-4000:]}")


def stop_process_group(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process's group (started in a session of its own), SIGKILL after `grace` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a master that exited
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def mlflow_server_command(backend: str, artifacts: Path, port: int, workers: int = 2,
                          extra: Sequence[str] = ()) -> list[str]:
    """`mlflow server` on `backend` with proxied artifacts: clients send artifacts over HTTP
    (`mlflow-artifacts:/` URIs), the server stores them under `artifacts`. uvicorn (MLflow's default) runs
    `workers` processes, each serving requests concurrently from a thread pool. `extra`: more server
    arguments (e.g. `--default-artifact-root` for a store whose runs logged their artifacts locally)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *extra]


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path | None = None, workers: int = 2,
                  jobs: bool = False, extra: Sequence[str] = (), cwd: Path | None = None) -> Iterator[str]:
    """A running `mlflow server` on `backend`; yields `http://127.0.0.1:<port>`; always stopped on exit."""
    artifacts = Path(artifacts).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else artifacts.parent / "mlflow-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        process = subprocess.Popen(mlflow_server_command(backend, artifacts, port, workers, extra),
                                   cwd=cwd or artifacts.parent, env=server_env(jobs), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(url, process, log)
        yield url
    finally:
        stop_process_group(process)
