"""A throwaway PostgreSQL cluster on 127.0.0.1, to back an MLflow tracking server or Optuna
(initdb and pg_ctl from the machine's PostgreSQL server binaries)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.servers.process import HOST, ServerError, free_port, log_tail

POSTGRES_HOWTO = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
    "(Debian/Ubuntu: `apt-get install postgresql`, they land in /usr/lib/postgresql/<version>/bin) "
    "or point LSTM_PG_BIN at the folder that holds them"
)
# initdb refuses to run as root: a root process runs the cluster as this user (made if missing).
POSTGRES_OS_USER = "lstm-postgres"


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl: $LSTM_PG_BIN, else PATH, else the newest Debian one."""
    candidates = [os.environ.get("LSTM_PG_BIN", "")]
    found = shutil.which("pg_ctl")
    candidates.append(str(Path(found).parent) if found else "")
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(str(p) for p in debian)
    for c in filter(None, candidates):
        if (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _os_user(name: str) -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as: None when not root; `name` created if missing."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in a folder of its own, listening on 127.0.0.1:`port` only.

    The superuser `postgres` and every role made by `create_database` log in with a password
    over TCP (scram-sha-256), as clients on other machines would.
    """

    bin_dir: Path
    root: Path
    port: int
    password: str
    owner: tuple[int, int] | None  # (uid, gid) the server runs as; None: this process's user
    databases: dict[str, str] = field(default_factory=dict)  # name -> its owner's password

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if self.owner is not None:
            kwargs = {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C"},
            cwd=self.root,
            **kwargs,
        )

    def url(self, database: str, driver: str = "psycopg") -> str:
        """The SQLAlchemy URL of `database`, as its owner (``postgresql+<driver>://...``)."""
        user, password = (
            (database, self.databases[database])
            if database in self.databases
            else ("postgres", self.password)
        )
        return f"postgresql+{driver}://{user}:{password}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """A psycopg connection as the superuser (autocommit)."""
        import psycopg

        return psycopg.connect(
            host=HOST,
            port=self.port,
            user="postgres",
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """CREATE ROLE `name` LOGIN and CREATE DATABASE `name` owned by it; returns its URL."""
        from psycopg import sql

        password = secrets.token_hex(12)
        with self.connect() as con:
            con.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            con.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(name)
                )
            )
        self.databases[name] = password
        return self.url(name)

    @property
    def alive(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", timeout=30).returncode == 0

    def stop(self, remove: bool = True) -> None:
        """Fast shutdown (clients disconnected), a kill if that fails; then delete the folder."""
        if self.data_dir.is_dir():
            out = self._run(
                "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=90
            )
            if out.returncode != 0 and self.alive:
                pid_file = self.data_dir / "postmaster.pid"
                with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(
    port: int | None = None,
    databases: Sequence[str] = (),
    durable: bool = True,
    timeout: float = 120.0,
    os_user: str = POSTGRES_OS_USER,
) -> PostgresCluster:
    """initdb into a new temporary folder and start the cluster on 127.0.0.1 (`pg_ctl -w`).

    Run as root, the cluster belongs to `os_user` (created if missing), as initdb demands.
    `durable=False` turns fsync off (tests: nothing to keep). Raises ServerError with
    `POSTGRES_HOWTO` when the binaries are missing, or with the log's tail when it fails.
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise ServerError(POSTGRES_HOWTO)
    owner = _os_user(os_user)
    # Not under a root-only temporary folder: the cluster's user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="lstm-postgres-"))
    if owner is not None:
        os.chown(root, *owner)
    cluster = PostgresCluster(bin_dir, root, port or free_port(), secrets.token_hex(12), owner)
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(cluster.password + "\n")
        if owner is not None:
            os.chown(pwfile, *owner)
        out = cluster._run(
            "initdb",
            "-D",
            str(cluster.data_dir),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",  # the socket sits in the cluster's private folder
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        if out.returncode != 0:
            raise ServerError(f"initdb failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        options = f"-h {HOST} -p {cluster.port} -k {root}" + ("" if durable else " -c fsync=off")
        out = cluster._run(
            "pg_ctl",
            "-D",
            str(cluster.data_dir),
            "-l",
            str(cluster.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 30,
        )
        if out.returncode != 0:
            raise ServerError(
                f"pg_ctl start failed (port {cluster.port}):\n{out.stderr[-2000:]}\n"
                f"log {cluster.log_path}:\n{log_tail(cluster.log_path)}"
            )
        for name in databases:
            cluster.create_database(name)
        return cluster
    except BaseException:
        cluster.stop()
        raise
