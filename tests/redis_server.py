"""A private, throwaway Redis server (Debian's `redis-server`) on a free loopback port: no
persistence, its own working directory. The tests start, kill and restart it."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


def binary() -> str | None:
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                            else None)


class RedisServer:
    def __init__(self, workdir: Path, port: int):
        self.workdir = Path(workdir)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [binary() or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no",
             "--enable-debug-command", "local"],  # DEBUG SLEEP: a slow Redis
            stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.workdir}/redis.log")
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port} within {timeout} s")

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stall(self, seconds: float) -> None:
        """Make Redis unresponsive for `seconds` (it blocks in DEBUG SLEEP), in the background."""
        import threading
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=seconds + 30)

        def sleep():
            try:
                client.execute_command("DEBUG", "SLEEP", seconds)
            except redis.RedisError:
                pass  # killed while asleep

        threading.Thread(target=sleep, daemon=True).start()
        time.sleep(0.1)  # the command has reached the server

    def kill(self) -> None:
        """Stop it hard, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    stop = kill
