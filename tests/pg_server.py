"""A throw-away PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` system user
(``runuser``). Clients connect over TCP on a free loopback port with a password (scram-sha-256,
so a wrong password really fails); the administrator connects over a Unix socket in the same
temporary folder (trust). ``start()`` raises ``Unavailable`` with the reason when no server can
be started (no PostgreSQL binaries, no ``postgres`` user): the fixture turns it into a skip.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD, DATABASE = "inspector", "s3cret-Pw!", "inspection"


class Unavailable(RuntimeError):
    pass


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise Unavailable(f"PostgreSQL's {name} not found (install postgresql; .ci/run does it with apt-get)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    base: Path
    port: int
    as_user: list[str]
    pg_ctl: str

    @property
    def socket_dir(self) -> str:
        return str(self.base)

    def url(self, table: str = "detections", user: str = USER, database: str = DATABASE,
            port: int | None = None) -> str:
        return f"postgresql://{user}@127.0.0.1:{port or self.port}/{database}?table={table}"

    def admin(self, database: str = "postgres"):
        """A psycopg connection as the superuser over the Unix socket (autocommit).

        In the test database it acts as the client role, so the tables it creates belong to it.
        """
        import psycopg

        con = psycopg.connect(host=self.socket_dir, port=self.port, user="postgres", dbname=database,
                              autocommit=True)
        if database == DATABASE:
            con.execute(f"SET ROLE {USER}")
        return con

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def start() -> PgServer:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install -r requirements.txt)") from None
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="toolkit_pg_"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
        if runuser is None:
            shutil.rmtree(base, ignore_errors=True)
            raise Unavailable("running as root and runuser is missing")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    os.chmod(base, 0o700)
    pwfile = base / "pw"
    pwfile.write_text("postgres-admin\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    init = subprocess.run([*as_user, initdb, "-D", str(base / "data"), "-U", "postgres", "--auth-local=trust",
                           "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", f"--pwfile={pwfile}"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise Unavailable(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -F"
    started = subprocess.run([*as_user, pg_ctl, "-D", str(base / "data"), "-o", options, "-l", str(base / "log"),
                              "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=90)
    server = PgServer(base=base, port=port, as_user=as_user, pg_ctl=pg_ctl)
    if started.returncode != 0:
        log = (base / "log").read_text(errors="replace")[-300:] if (base / "log").exists() else ""
        server.stop()
        raise Unavailable(f"pg_ctl start failed: {started.stderr.strip()[-200:]} {log}")
    with server.admin() as con:
        con.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        con.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
    return server
