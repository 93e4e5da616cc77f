"""The processes benchmarks and tests run next to qasr: `qasr serve` itself, a throwaway PostgreSQL server,
Debian's nginx serving the repository's load balancer config, and Debian's Prometheus. Each listens on loopback only
and cleans up after itself."""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]  # in a source checkout; an installed wheel has no deploy/
NGINX_CONFIG = REPOSITORY / "deploy" / "nginx" / "qasr.conf"
PROMETHEUS_CONFIG = REPOSITORY / "deploy" / "prometheus" / "prometheus.yml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float, alive) -> None:
    """Until something accepts connections on 127.0.0.1:port; `alive()` False (the process died) gives up early."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class ServerProcess:
    """`qasr serve` in a process of its own (optionally under a lower open-file limit, soft and hard); `.url` once it
    listens, `.peak_rss_mb()`, `.log()`, `.stop()` (SIGINT, or the signal given, then `.wait()`: the exit code; a
    server still running after `timeout` writes its threads' stacks to the log and is killed), `.kill()`,
    `.dump_stacks()`.
    Later flags win over the defaults (`--port 0 --task-db :memory:`)."""

    def __init__(self, *flags: str, log_path: Path, open_files: int | None = None, env: dict[str, str] | None = None):
        command = [sys.executable, "-m", "qasr", "serve", "--port", "0", "--task-db", ":memory:", *flags]
        if open_files is not None:
            command = ["bash", "-c", f'ulimit -n {open_files} && exec "$@"', "qasr", *command]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=None if env is None else {**os.environ, **env})
        deadline = time.monotonic() + 300
        while not (found := re.search(r"serving \S+ on (http://\S+) ", self.log())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"qasr serve did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        self.url = found.group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """The exit code; a server still running after `timeout` writes its threads' stacks to the log, is killed,
        and TimeoutExpired is raised."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            self.kill()
            raise

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def dump_stacks(self) -> None:
        """Every thread's stack into the log (the server's SIGUSR1), for one that hangs."""
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)


class ThrowawayPostgres:
    """A PostgreSQL server of its own in a temporary folder, on a free loopback port, without durability (fsync
    off); `new_database()` gives each user a database of its own. `stop()` deletes everything."""

    def __init__(self) -> None:
        import psycopg

        bindir = postgres_bindir()
        # postgres refuses to run as root; pytest's tmp_path is private to root, so the folder is a fresh one in /tmp
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="qasr-pg-"))
        if self.as_user:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, PostgreSQL needs a user to run as: there is no `postgres` user "
                                   "(installing postgresql with apt-get creates it)") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self.pg_ctl = [*self.as_user, str(bindir / "pg_ctl"), "-D", str(self.root / "data")]
        self._run(*self.as_user, str(bindir / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self.admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self.databases = 0

    def start(self) -> None:
        self._run(*self.pg_ctl, "-l", str(self.root / "log"), "-w", "-t", "30", "start", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off")

    def pause(self) -> None:
        """Stops the server, keeping its data; start() brings it back."""
        self._run(*self.pg_ctl, "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        self.databases += 1
        self.admin.execute(f"CREATE DATABASE tasks_{self.databases}")
        return self.url(f"tasks_{self.databases}")

    def stop(self) -> None:
        self.admin.close()
        subprocess.run([*self.pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"
                               f"{log.read_text() if log.exists() else ''}")


def postgres_bindir() -> Path:
    """The folder of initdb and pg_ctl: on PATH, or where Debian's packages put them (the newest version)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                           "`apt-get install postgresql`, which `make setup` does")
    return Path(found[-1]).parent


class Nginx:
    """nginx on a free loopback port serving `config` (the repository's deploy/nginx/qasr.conf) with its upstreams
    pointed at `replicas` ("127.0.0.1:PORT" each); `.url`, `.stop()`. Its files live in `root`."""

    def __init__(self, replicas: list[str], root: Path, config: Path = NGINX_CONFIG):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx is not installed: `apt-get install nginx-light`, which `make setup` does")
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        (root / "qasr.conf").write_text(point_at(config.read_text(), replicas, f"127.0.0.1:{self.port}"))
        (root / "nginx.conf").write_text(main_config(root, root / "qasr.conf"))
        self.process = subprocess.Popen([binary, "-p", str(root), "-c", str(root / "nginx.conf"),
                                         "-e", str(root / "error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(self.port, 30, lambda: self.process.poll() is None)
        except OSError:
            self.process.kill()
            raise RuntimeError(f"nginx did not start: {self.process.communicate()[1].decode()}"
                               f"{self.error_log()}") from None
        self.url = f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log_size(self) -> int:
        path = self.root / "access.log"
        return path.stat().st_size if path.exists() else 0

    def resent_since(self, offset: int, paths: tuple[str, ...]) -> int:
        """Requests for `paths` logged after byte `offset` of the access log that nginx sent to more than one
        replica (their upstream statuses read "502, 200" or "503, 200")."""
        with (self.root / "access.log").open("rb") as log:
            log.seek(offset)
            lines = [line.split(b" ", 4) for line in log.read().splitlines()]
        return sum(fields[2].decode() in paths and b"," in fields[4].rsplit(b'"', 2)[-2] for fields in lines)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def point_at(config: str, replicas: list[str], listen: str) -> str:
    """`config` with each upstream's server lines replaced by one per replica (keeping the first line's
    parameters) and each `listen` on `listen`."""
    def upstream(match: re.Match) -> str:
        body = match.group(2)
        servers = re.findall(r"^(\s*)server\s+\S+(.*;)\s*$", body, flags=re.M)
        if not servers:
            raise ValueError(f"upstream {match.group(1)} lists no servers")
        indent, parameters = servers[0]
        lines = "".join(f"{indent}server {replica}{parameters}\n" for replica in replicas)
        body = re.sub(r"^\s*server\s+\S+.*;\s*\n", "", body, flags=re.M)
        return f"upstream {match.group(1)} {{\n{lines}{body.lstrip(chr(10))}}}"

    config = re.sub(r"upstream\s+(\w+)\s*\{(.*?)\}", upstream, config, flags=re.S)
    return re.sub(r"^(\s*)listen\s+[^;]+;", rf"\g<1>listen {listen};", config, flags=re.M)


# what each replica nginx tried answered, in order, last: "502, 200" is a request nginx sent again
ACCESS_LOG_FORMAT = ("log_format upstreams '$msec $request_method $uri $status \"$upstream_addr\" "
                     "\"$upstream_status\"';")


def main_config(root: Path, include: Path) -> str:
    """A whole nginx.conf around an http-level file: in the foreground, every path under `root`."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers need the temp folders under root's tmp
    temp = "".join(f"    {kind}_temp_path {root / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                           "scgi"))
    return (f"{user}daemon off;\nworker_processes 1;\npid {root / 'nginx.pid'};\nerror_log {root / 'error.log'} "
            f"warn;\nevents {{\n    worker_connections 1024;\n}}\nhttp {{\n    {ACCESS_LOG_FORMAT}\n"
            f"    access_log {root / 'access.log'} upstreams;\n"
            f"{temp}    include {include};\n}}\n")


class Prometheus:
    """Debian's Prometheus on loopback (`port`, or a free one) with `config` (a parsed prometheus.yml), its data in
    `root`; `.url`, `.query(expr, at)` and `.query_range(expr, start, end, step)` (the HTTP API's `data.result`),
    `.stop()`."""

    def __init__(self, config: dict, root: Path, port: int | None = None):
        import yaml

        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise RuntimeError("prometheus is not installed: `apt-get install prometheus`, which `make setup` does")
        root.mkdir(parents=True, exist_ok=True)
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"prometheus did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def api(self, path: str, **parameters: object) -> list[dict]:
        query = urllib.parse.urlencode({key: str(value) for key, value in parameters.items()})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:  # a bad query: Prometheus says why in the body
            answer = json.loads(error.read())
        if answer["status"] != "success":
            raise RuntimeError(f"{path} {parameters}: {answer}")
        return answer["data"]["result"] if isinstance(answer["data"], dict) else answer["data"]

    def query(self, expr: str, at: float) -> list[dict]:
        return self.api("query", query=expr, time=f"{at:.3f}")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
