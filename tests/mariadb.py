"""A private, throwaway MariaDB server (its own data directory, socket and loopback port).

Used by the test fixtures and by .ci/run:
    python -m tests.mariadb start DIR PORT   # install the data dir if needed, start, wait
    python -m tests.mariadb stop PORT
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pymysql


def binaries_available() -> bool:
    return bool(shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists()) and bool(
        shutil.which("mariadb-install-db"))


def _mariadbd() -> str:
    return shutil.which("mariadbd") or "/usr/sbin/mariadbd"


class MariaDBServer:
    def __init__(self, datadir: Path, port: int):
        self.datadir = Path(datadir)
        self.port = port
        self.process: subprocess.Popen | None = None

    def install(self) -> None:
        if (self.datadir / "mysql").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self, timeout: float = 30.0, detach: bool = False) -> None:
        self.install()
        log = open(self.datadir / "server.log", "ab")
        self.process = subprocess.Popen(
            [_mariadbd(), "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             f"--socket={self.datadir}/sock", f"--port={self.port}", "--bind-address=127.0.0.1",
             "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=300",
             f"--pid-file={self.datadir}/pid"],
            stdout=log, stderr=log, start_new_session=detach)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}; see {self.datadir}/server.log")
            if self.answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"mariadbd did not answer on 127.0.0.1:{self.port} within {timeout} s")

    def answers(self) -> bool:
        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
            return True
        except pymysql.err.OperationalError:
            return False

    def stop(self) -> None:
        try:
            with pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2) as conn:
                conn.cursor().execute("SHUTDOWN")
        except pymysql.err.Error:
            pass
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self, timeout: float = 30.0) -> None:
        """Stop, then start again on the same data directory and port (as an operator would)."""
        self.stop()
        self.start(timeout)

    def create_database(self, database: str, user: str, password: str) -> None:
        with pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, host, password))
                cur.execute(f"GRANT ALL ON `{database}`.* TO %s@%s", (user, host))


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "start":
        server = MariaDBServer(Path(rest[0]), int(rest[1]))
        server.start(detach=True)
        server.create_database(os.environ.get("TRADEUP_MYSQL_DATABASE", "tradeup_test"),
                               os.environ.get("TRADEUP_MYSQL_USER", "tradeup"),
                               os.environ["TRADEUP_MYSQL_PASSWORD"])
        print(f"MariaDB answering on 127.0.0.1:{server.port} (data in {server.datadir})")
    elif command == "stop":
        MariaDBServer(Path("."), int(rest[0])).stop()
    else:
        sys.exit("usage: python -m tests.mariadb start DIR PORT | stop PORT")
