"""An embedded Postgres for `make run`, `make test` and `make bench` when no DATABASE_URL is set.

The server binaries come from the `pgserver` wheel on PyPI (so nothing needs installing by
hand), else from `pg_config --bindir` or PATH. The cluster listens on 127.0.0.1 only, on
a free port, with trust authentication: it is a development database, never a deployment.
Postgres refuses to run as root, so as root the cluster runs as an unprivileged user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

SERVICE_USER = "gateway-pg"


class EmbeddedPostgresError(Exception):
    pass


def find_bin_dir() -> Path:
    explicit = os.environ.get("GATEWAY_PG_BIN")
    if explicit:
        return Path(explicit)
    # Located without importing pgserver, whose import has side effects.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "pginstall" / "bin"
        if (path / "pg_ctl").exists():
            return path
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "pg_ctl").exists():
            return Path(out.stdout.strip())
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    raise EmbeddedPostgresError(
        "no Postgres binaries found: install the dev extras (pgserver) or set DATABASE_URL"
    )


_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server about to bind it.

    Taken below the kernel's ephemeral range, where `bind(0)` and outgoing connections
    take their local ports, so that no connection made before the server binds takes it;
    and never the same twice in one process. Where that range leaves no room below it,
    the kernel's choice.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(low - 10_000, low) if low > 11_024 else _kernel_port()
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError("no free port found")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _service_user() -> pwd.struct_passwd | None:
    """The user to run Postgres as when we are root; created on first use."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        # Two runs may race to create it: whoever loses finds it made.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=False,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _make_traversable(path: Path) -> None:
    """Let the service user reach `path` (o+x on each parent, as pgserver does)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o005)


class EmbeddedPostgres:
    """One local cluster in `data_dir`, started and stopped with pg_ctl."""

    def __init__(self, data_dir: Path, *, fast_unsafe: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.bin_dir = find_bin_dir()
        self.port: int | None = None
        # Tests and benchmarks do not need durability; a kept dev database does.
        self.fast_unsafe = fast_unsafe
        self._user = _service_user()

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        assert self.port is not None, "not started"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        result: subprocess.CompletedProcess[str] = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd="/",
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _make_traversable(self.data_dir.parent)
            _make_traversable(self.bin_dir)
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
        settings = [
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",
            "max_connections = 200",
            "log_min_messages = warning",
        ]
        if self.fast_unsafe:
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# gateway embedded Postgres\n" + "\n".join(settings) + "\n")

    def running_port(self) -> int | None:
        """The port of a server already running on this data folder, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        try:
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (IndexError, ValueError, ProcessLookupError):
            return None
        except PermissionError:
            pass  # alive, owned by the service user
        if not self._serves_here(pid):
            # Left by a server that did not stop (a crash, a reboot), its PID now another
            # process's. Postgres would refuse to start while that PID lives, and pg_ctl
            # stop would signal that process: the file goes.
            pid_file.unlink(missing_ok=True)
            return None
        return port

    def _serves_here(self, pid: int) -> bool:
        """Whether process `pid` is a postmaster of this data folder: it works in it
        (postgres changes to its data folder at start). Where there is no /proc: assumed."""
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self.data_dir
        except FileNotFoundError:  # gone since, or no /proc on this system
            return not Path("/proc/self").exists()
        except PermissionError:  # another user's, and ours run as us (or, as root, are readable)
            return False

    def start(self, port: int | None = None) -> bool:
        """Start the cluster, or attach to one already running on this folder.

        Returns True when this call started the server, so that only its starter stops it
        (a second `make run` must not stop the server the first one is using).
        """
        self.init()
        already = self.running_port()
        if already is not None:
            self.port = already
            return False
        self.port = port or self.port or free_port()
        if self._user is not None and not self.log_file.exists():
            self.log_file.touch()
            os.chown(self.log_file, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port}",
        )
        self._wait_ready()
        return True

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self._run(
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                check=False,
            )
            if result.returncode == 0:
                return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"Postgres did not become ready; see {self.log_file}")

    def stop(self, mode: str = "fast") -> None:
        if self.running_port() is not None:
            self._run("pg_ctl", "stop", "-w", "-D", str(self.data_dir), "-m", mode, check=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            self.url(database),
            "-c",
            sql,
        )
        return result.stdout

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise EmbeddedPostgresError(f"not a plain database name: {name!r}")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
        if not exists.strip():
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)
