#!/usr/bin/env python3
"""K2's local stack, without Docker: Kafka (KRaft), Apicurio Registry and optional profiles.

Usage::

    python3 deploy/local/stack.py up     [--profile rest] [--profile prometheus]
    python3 deploy/local/stack.py status [--profile rest,prometheus]
    python3 deploy/local/stack.py down   [--purge]
    python3 deploy/local/stack.py stop   NAME... [--kill]
    python3 deploy/local/stack.py start  NAME...
    python3 deploy/local/stack.py freeze NAME...
    python3 deploy/local/stack.py thaw   NAME...

``stop``/``start`` act on single services (kafka, registry, s3, rest, prometheus) so that
fault tests can take one away under a running K2 and bring it back: ``stop`` sends SIGTERM
(``--kill``: SIGKILL, no goodbye), ``start`` is ``up`` for the named services only.
``freeze`` sends SIGSTOP (the process keeps its sockets but answers nothing, like a hung
server) and ``thaw`` SIGCONT.

Services, all listening on 127.0.0.1 only (port: default and the variable that changes it):

- kafka (always): Apache Kafka 4, one KRaft broker+controller; 9092 K2_KAFKA_PORT (PLAINTEXT),
  controller 9093 K2_KAFKA_CONTROLLER_PORT, and a SASL_SSL listener on 9094
  K2_KAFKA_SECURE_PORT: TLS with a self-signed certificate made by keytool at the first ``up``
  (the CA file for clients: ``var/conf/kafka/tls/ca.pem``), SASL PLAIN and SCRAM-SHA-256/512
  for the user ``k2`` with the password ``k2-local-secret`` (a local stack's, printed by ``up``).
- registry (always): Apicurio Registry 3 with the Confluent API at /apis/ccompat/v7;
  8081 K2_REGISTRY_PORT.
- s3 (profile rest): moto's S3 API, run by K2_PYTHON (default .venv/bin/python), bucket
  ``warehouse``; 9000 K2_S3_PORT.
- rest (profile rest): Iceberg's REST catalog test server over that bucket; 8181 K2_REST_PORT.
- prometheus (profile prometheus): Debian's ``prometheus`` with deploy/prometheus/prometheus.yml;
  9090 K2_PROMETHEUS_PORT.

Everything lives under ``var/`` of the repository (``K2_VAR_DIR`` overrides it; a relative
path is taken from the repository root): ``var/lib`` holds downloaded artifacts (Maven
resolves them from Maven Central into ``~/.m2`` first), ``var/data`` and
``var/prometheus`` the services' data, ``var/log/<service>.log`` their output and
``var/run/<service>.pid`` their process ids.

Kafka's topics and the registry's schemas (H2 file database) survive ``down``/``up``.
The ``rest`` profile's S3 (moto) keeps its objects in memory, so ``down`` discards its
tables. The REST catalog keeps its own state in a SQLite file (``var/data/rest``), so that
it survives a restart of the catalog alone, as a real catalog would; that file is wiped
whenever the S3 API starts afresh, because the tables it lists point into the bucket.

``up`` is idempotent: a service of ours that is already healthy is left alone. Exit
codes: 0 ok, 1 failure (the message says what to do), 2 usage, 3 ``status`` found a
requested service not healthy. Standard library only: this runs before the venv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PROFILES = ("rest", "prometheus")

KAFKA_POM = HERE / "kafka" / "pom.xml"
KAFKA_LOG4J = HERE / "kafka" / "log4j2.properties"
# 3.0.9 runs on Java 17; Apicurio 3.3.x is built for Java 21 (class files version 65).
APICURIO_VERSION = "3.0.9"
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
ICEBERG_REST_VERSION = "1.10.1"
ICEBERG_REST_ARTIFACT = f"org.apache.iceberg:iceberg-open-api:{ICEBERG_REST_VERSION}"
REST_LAUNCHER = HERE / "iceberg-rest" / "LoopbackRESTCatalogServer.java"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

S3_BUCKET = os.environ.get("K2_S3_BUCKET", "warehouse")
S3_REGION = "us-east-1"
S3_KEY = "test"  # moto accepts any credentials; these are the stack's documented ones

MAVEN_TIMEOUT_S = 900
LOG_TAIL_LINES = 30

INSTALL_JAVA = "apt-get update && apt-get install -y openjdk-17-jdk-headless"
INSTALL_MAVEN = "apt-get update && apt-get install -y maven"
INSTALL_PROMETHEUS = "apt-get update && apt-get install -y --no-install-recommends prometheus"


class StackError(Exception):
    """A failure the user can act on: the message says what is wrong and what to do."""


# --------------------------------------------------------------------------- helpers


def rel(path: Path) -> str:
    """A path as short as it can be for messages: relative to the working directory if inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a number; unset it or give a port such as {default}.") from None
    if not 0 < value < 65536:
        raise StackError(f"{name}={value} is not a TCP port (1-65535).")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a number of seconds.") from None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a file, read from its end (logs can be large)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return "(no log yet)"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in text) if text else "(log is empty)"


def log_excerpt(path: Path) -> str:
    return f"Last {LOG_TAIL_LINES} lines of {rel(path)}:\n{tail(path)}"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, method: str = "GET", timeout: float = 2.0) -> int | None:
    """The HTTP status of a request to a local service, or None if it does not answer (proxies ignored)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "PUT" else None)
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def port_free(port: int) -> bool:
    """Whether we could listen on HOST:port (SO_REUSEADDR, like the servers themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def kafka_brokers(port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Ask a broker for cluster metadata (Metadata v4, no topics) and return its brokers.

    A raw protocol request keeps this standard-library only; an empty list means "not ready".
    """
    client_id = b"k2-stack"
    body = struct.pack(">i", 0) + b"\x00"  # topics: empty array; allow_auto_topic_creation: false
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    payload = header + body
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(payload)) + payload)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            data = _recv_exact(sock, size)
    except (OSError, struct.error):
        return []
    try:
        correlation_id, _throttle, count = struct.unpack_from(">iii", data, 0)
        if correlation_id != 7:
            return []
        offset, brokers = 12, []
        for _ in range(count):
            node_id, host_len = struct.unpack_from(">ih", data, offset)
            offset += 6
            host = data[offset : offset + host_len].decode()
            offset += host_len
            (broker_port, rack_len) = struct.unpack_from(">ih", data, offset)
            offset += 6 + max(rack_len, 0)
            brokers.append((node_id, host, broker_port))
        return brokers
    except (struct.error, UnicodeDecodeError):
        return []


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise OSError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------- process helpers


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def proc_cmdline(pid: int, limit: int = 160) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listener_pids(port: int) -> set[int]:
    """Pids holding a listening TCP socket on `port` (any address), found through /proc; best effort."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        pids.add(int(entry.name))
                        break
        except OSError:
            continue
    return pids


def signal_process(pid: int, sig: int) -> None:
    """Signal our process and, as it leads its own session, the children it may have."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def java_bin(tool: str = "java") -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / tool).is_file():
        return str(Path(java_home) / "bin" / tool)
    return shutil.which(tool)


# ----------------------------------------------------------------------- the stack


class Stack:
    """Paths, ports and tools, read once from the environment."""

    def __init__(self) -> None:
        var = Path(os.environ.get("K2_VAR_DIR") or "var")
        self.var = (var if var.is_absolute() else ROOT / var).resolve()
        self.run = self.var / "run"
        self.log = self.var / "log"
        self.lib = self.var / "lib"
        self.data = self.var / "data"
        self.conf = self.var / "conf"
        self.timeout = env_float("K2_STACK_TIMEOUT", 120.0)
        self.services: list[Service] = [
            Kafka(self),
            Registry(self),
            S3(self),
            RestCatalog(self),
            Prometheus(self),
        ]
        self._java_checked = False

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def selected(self, profiles: set[str]) -> list[Service]:
        return [s for s in self.services if s.profile is None or s.profile in profiles]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One `up` or `down` at a time (a test session and a shell may race)."""
        self.run.mkdir(parents=True, exist_ok=True)
        with (self.run / "stack.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # Tools -------------------------------------------------------------------------------

    def java(self) -> str:
        java = java_bin("java")
        if java is None:
            raise StackError(f"`java` was not found (Java 17+ is needed). Install it with: {INSTALL_JAVA}")
        if not self._java_checked:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
            match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
            major = int(match.group(1)) if match else 0
            if major == 1 and match and match.group(2):
                major = int(match.group(2))
            if major < 17:
                raise StackError(
                    f"{java} is Java {major or '?'}, but Kafka 4 and Apicurio 3 need Java 17 or newer. "
                    f"Install one ({INSTALL_JAVA}) and put it first on PATH or set JAVA_HOME."
                )
            self._java_checked = True
        return java

    def need_mvn(self, what: str) -> str:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                "`mvn` was not found; it fetches the Java services (Kafka, Apicurio Registry, the Iceberg REST "
                f"catalog) from Maven Central on first use. Install it: {INSTALL_MAVEN}"
            )
        return mvn

    def mvn(self, args: list[str], what: str) -> None:
        mvn = self.need_mvn(what)
        self.java()
        self.log.mkdir(parents=True, exist_ok=True)
        log = self.log / "maven.log"
        cmd = [mvn, "-B", "-q", "-Dmaven.artifact.threads=8", *args]
        print(
            f"  fetching {what} with Maven (first run only; cached in the Maven repository and {rel(self.lib)})",
            flush=True,
        )
        with log.open("ab") as fh:
            fh.write(f"\n=== {time.strftime('%F %T')} {shlex.join(cmd)}\n".encode())
            fh.flush()
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=MAVEN_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise StackError(
                    f"Maven did not finish fetching {what} within {MAVEN_TIMEOUT_S}s (is Maven Central reachable?)."
                    f"\n{log_excerpt(log)}"
                ) from None
        if proc.returncode != 0:
            raise StackError(
                f"Maven failed to fetch {what} (exit {proc.returncode}). Check network access to Maven Central "
                f"and ~/.m2/settings.xml.\n{log_excerpt(log)}"
            )


class Service:
    name: ClassVar[str]
    profile: ClassVar[str | None] = None
    port_env: ClassVar[str]
    default_port: ClassVar[int]
    stop_timeout: ClassVar[float] = 20.0
    health_text: ClassVar[str]

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.port = env_int(self.port_env, self.default_port)

    # What each service defines ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.port, self.port_env)]

    def healthy(self) -> bool:
        raise NotImplementedError

    def preflight(self) -> None:
        """Check, quickly and without side effects, that the tools needed to start are here."""

    def prepare(self) -> None:
        """Fetch, unpack, configure: everything before the process can start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def after_healthy(self) -> None:
        """Runs after every successful `up` of this service, even when it was already running."""

    def summary(self) -> str:
        return self.url

    # Common machinery -------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.stack.log / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.stack.run / f"{self.name}.pid"

    @property
    def cwd(self) -> Path:
        return self.stack.var

    def is_ours(self, pid: int) -> bool:
        env = proc_environ(pid)
        return env.get("K2_STACK_SERVICE") == self.name and env.get("K2_STACK_VAR") == str(self.stack.var)

    def port_list(self) -> str:
        return ",".join(str(port) for port, _ in self.ports())

    def check_same_ports(self, pid: int) -> None:
        started_with = proc_environ(pid).get("K2_STACK_PORTS", "")
        if started_with and started_with != self.port_list():
            names = ", ".join(env for _, env in self.ports())
            raise StackError(
                f"{self.name} is already running (pid {pid}) on port(s) {started_with}, but the environment now "
                f"asks for {self.port_list()} ({names}). Run `python3 deploy/local/stack.py down` first, or unset "
                "the changed variable."
            )

    def find_pid(self) -> int | None:
        """Our running process: from the pid file, else (pid file lost) from who listens on our ports."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_path.read_text().strip())
            if pid_alive(pid) and self.is_ours(pid):
                return pid
        for port, _ in self.ports():
            for pid in listener_pids(port):
                if self.is_ours(pid):
                    self.write_pid(pid)
                    return pid
        return None

    def write_pid(self, pid: int) -> None:
        self.stack.run.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(f"{pid}\n")

    def check_ports(self) -> None:
        for port, env in self.ports():
            if port_free(port):
                continue
            owners = sorted(listener_pids(port))
            who = "; ".join(f"pid {p}: {proc_cmdline(p)}" for p in owners) or "a process this user cannot see"
            hint = ""
            if any("prometheus" in proc_cmdline(p) for p in owners) and self.name == "prometheus":
                hint = (
                    "\n  Debian's own prometheus service may hold it: "
                    "`systemctl disable --now prometheus` (or `service prometheus stop`)."
                )
            raise StackError(
                f"{self.name}: port {port} on {HOST} is already in use by something this script did not start "
                f"({who}).\n  Stop that process, or choose another port with {env}, e.g. "
                f"`{env}={port + 10000} python3 deploy/local/stack.py up` (and export the same {env} for K2 and "
                f"the tests).\n  To see who holds it: ss -ltnp 'sport = :{port}'{hint}"
            )

    def spawn(self) -> subprocess.Popen[bytes]:
        cmd = self.command()
        env = {
            **os.environ,
            **self.environment(),
            # Marks the process as ours (see is_ours) and records the ports it was started with.
            "K2_STACK_SERVICE": self.name,
            "K2_STACK_VAR": str(self.stack.var),
            "K2_STACK_PORTS": self.port_list(),
        }
        self.stack.log.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} k2 stack: starting {self.name}: {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the terminal, make and pytest that started it
            )
        self.write_pid(proc.pid)
        return proc

    def wait_healthy(self, pid: int, proc: subprocess.Popen[bytes] | None, deadline: float) -> None:
        while True:
            code = proc.poll() if proc is not None else (None if pid_alive(pid) else "?")
            if code is not None:
                with contextlib.suppress(OSError):
                    self.pid_path.unlink()
                raise StackError(
                    f"{self.name} exited (code {code}) before it was healthy.\n{log_excerpt(self.log_path)}\n"
                    f"  Fix the cause shown above, then run `python3 deploy/local/stack.py up` again."
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} (pid {pid}) did not become healthy within {self.stack.timeout:.0f}s "
                    f"({self.health_text}).\n{log_excerpt(self.log_path)}\n"
                    f"  It is left running for inspection: `python3 deploy/local/stack.py down` stops it; "
                    f"K2_STACK_TIMEOUT raises the limit."
                )
            time.sleep(0.25)

    def stop(self, pid: int) -> bool:
        signal_process(pid, signal.SIGTERM)
        signal_process(pid, signal.SIGCONT)  # a frozen process handles SIGTERM only once it runs again
        if not self._wait_exit(pid, self.stop_timeout):
            print(f"  {self.name} (pid {pid}) ignored SIGTERM for {self.stop_timeout:.0f}s; sending SIGKILL")
            signal_process(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10):
                return False
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        return True

    @staticmethod
    def _wait_exit(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.1)
        return not pid_alive(pid)

    def purge_paths(self) -> list[Path]:
        return [self.log_path, self.pid_path]


class Kafka(Service):
    name = "kafka"
    port_env = "K2_KAFKA_PORT"
    default_port = 9092
    stop_timeout = 30.0
    health_text = "a broker answering a Metadata request"

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self.controller_port = env_int("K2_KAFKA_CONTROLLER_PORT", 9093)
        self.secure_port = env_int("K2_KAFKA_SECURE_PORT", 9094)
        self.libdir = stack.lib / "kafka"
        self.datadir = stack.data / "kafka"
        self.config = stack.conf / "kafka" / "server.properties"
        self.tls = stack.conf / "kafka" / "tls"

    @property
    def url(self) -> str:
        return f"{HOST}:{self.port}"

    def ports(self) -> list[tuple[int, str]]:
        return [
            (self.port, self.port_env),
            (self.controller_port, "K2_KAFKA_CONTROLLER_PORT"),
            (self.secure_port, "K2_KAFKA_SECURE_PORT"),
        ]

    def healthy(self) -> bool:
        return bool(kafka_brokers(self.port))

    def summary(self) -> str:
        return (
            f"bootstrap {self.url}; SASL_SSL {HOST}:{self.secure_port} "
            f"(user {KAFKA_SASL_USER}, password {KAFKA_SASL_PASSWORD}, CA {rel(self.tls / 'ca.pem')})"
        )

    def _certificates(self, java: str) -> None:
        """A self-signed certificate for 127.0.0.1 in a PKCS12 keystore, and its PEM for clients (once)."""
        keystore, pem = self.tls / "kafka.p12", self.tls / "ca.pem"
        if keystore.is_file() and pem.is_file():
            return
        keytool = java_bin("keytool") or str(Path(java).with_name("keytool"))
        self.tls.mkdir(parents=True, exist_ok=True)
        keystore.unlink(missing_ok=True)
        store = ["-keystore", str(keystore), "-storetype", "PKCS12", "-storepass", KAFKA_TLS_PASSWORD]
        key = ["-keyalg", "RSA", "-keysize", "2048", "-validity", "3650", "-keypass", KAFKA_TLS_PASSWORD]
        name = ["-dname", f"CN={HOST}", "-ext", f"SAN=IP:{HOST},DNS:localhost"]
        for cmd in (
            [keytool, "-genkeypair", "-alias", "kafka", *key, *name, *store],
            [keytool, "-exportcert", "-rfc", "-alias", "kafka", "-file", str(pem), *store],
        ):
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise StackError(f"kafka: keytool failed making the TLS certificate: {done.stderr.strip()}")

    def after_healthy(self) -> None:
        """The SCRAM credentials of the local user (idempotent: set again at every `up`).

        One mechanism per request: Kafka refuses to alter a user's credentials twice in one.
        """
        base = [self.stack.java(), *self._jvm_common(), "kafka.admin.ConfigCommand", "--bootstrap-server", self.url]
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            scram = f"{mechanism}=[password={KAFKA_SASL_PASSWORD}]"
            cmd = [*base, "--alter", "--add-config", scram, "--entity-type", "users", "--entity-name", KAFKA_SASL_USER]
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                what = f"kafka: setting the {mechanism} credentials of {KAFKA_SASL_USER!r} failed"
                raise StackError(f"{what}:\n{done.stderr[-800:]}")

    def _libs_current(self) -> bool:
        stamp_file = self.libdir / ".k2-pom-sha256"
        return stamp_file.is_file() and stamp_file.read_text().strip() == self._stamp()

    @staticmethod
    def _stamp() -> str:
        return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()

    def preflight(self) -> None:
        self.stack.java()
        if not self._libs_current():
            self.stack.need_mvn("Kafka's jars")

    def prepare(self) -> None:
        java = self.stack.java()
        stamp = self._stamp()
        if not self._libs_current():
            tmp = self.stack.lib / f".kafka.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self.stack.mvn(
                    ["-f", str(KAFKA_POM), f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={tmp}"],
                    "Kafka's jars",
                )
                (tmp / ".k2-pom-sha256").write_text(stamp + "\n")
                shutil.rmtree(self.libdir, ignore_errors=True)
                tmp.rename(self.libdir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        self.config.parent.mkdir(parents=True, exist_ok=True)
        self._certificates(java)
        plain = f'user_{KAFKA_SASL_USER}="{KAFKA_SASL_PASSWORD}"'
        self.config.write_text(
            "# Written by deploy/local/stack.py at every start; edit the script, not this file.\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@{HOST}:{self.controller_port}\n"
            f"listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port},"
            f"SASL_SSL://{HOST}:{self.secure_port}\n"
            f"advertised.listeners=PLAINTEXT://{HOST}:{self.port},SASL_SSL://{HOST}:{self.secure_port}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL\n"
            # The secure listener, as a managed Kafka offers it: TLS, and SASL PLAIN or SCRAM.
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n"
            "listener.name.sasl_ssl.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};\n"
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            f"ssl.keystore.location={self.tls / 'kafka.p12'}\n"
            "ssl.keystore.type=PKCS12\n"
            f"ssl.keystore.password={KAFKA_TLS_PASSWORD}\n"
            f"ssl.key.password={KAFKA_TLS_PASSWORD}\n"
            f"log.dirs={self.datadir}\n"
            "num.partitions=1\n"
            "default.replication.factor=1\n"
            "offsets.topic.replication.factor=1\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            # The log cleaner looks for work every second, not every 15 s (Kafka's default): a changelog
            # segment K2 rolls is compacted within a second or two (k2/admin/changelogs.py).
            "log.cleaner.backoff.ms=1000\n"
            # Topics are created explicitly (K2's init, Faust's own internal topics), never by a typo.
            "auto.create.topics.enable=false\n"
        )
        if not (self.datadir / "meta.properties").is_file():
            self.datadir.mkdir(parents=True, exist_ok=True)
            cluster_id = ""
            while not cluster_id or cluster_id.startswith("-"):  # Kafka's own rule for its UUIDs
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            cmd = [java, *self._jvm_common(), "kafka.tools.StorageTool", "format"]
            cmd += ["--cluster-id", cluster_id, "--config", str(self.config), "--ignore-formatted"]
            self.stack.log.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                log.write(f"\n=== {time.strftime('%F %T')} k2 stack: formatting {self.datadir}\n".encode())
                log.flush()
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120)
            if proc.returncode != 0:
                raise StackError(
                    f"kafka: formatting the storage in {rel(self.datadir)} failed.\n{log_excerpt(self.log_path)}"
                )

    def _jvm_common(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={KAFKA_LOG4J}", "-cp", str(self.libdir / "*")]

    def command(self) -> list[str]:
        return [
            self.stack.java(),
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            *self._jvm_common(),
            "kafka.Kafka",
            str(self.config),
        ]

    def purge_paths(self) -> list[Path]:
        return [*super().purge_paths(), self.datadir, self.config.parent]


KAFKA_SASL_USER = "k2"
KAFKA_SASL_PASSWORD = "k2-local-secret"  # a local stack's on 127.0.0.1 only, printed by `up`
KAFKA_TLS_PASSWORD = "k2-local-tls"


class Registry(Service):
    name = "registry"
    port_env = "K2_REGISTRY_PORT"
    default_port = 8081
    health_text = "GET /apis/ccompat/v7/subjects answering 200"

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self.home = stack.lib / f"apicurio-registry-{APICURIO_VERSION}"
        self.jar = self.home / f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
        self.datadir = stack.data / "registry"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/apis/ccompat/v7"

    @property
    def cwd(self) -> Path:
        return self.datadir

    def healthy(self) -> bool:
        return http_status(f"{self.url}/subjects") == 200

    def preflight(self) -> None:
        self.stack.java()
        if not self.jar.is_file():
            self.stack.need_mvn(f"Apicurio Registry {APICURIO_VERSION}")

    def prepare(self) -> None:
        if self.jar.is_file():
            return
        tmp = self.stack.lib / f".apicurio.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = tmp / "registry.tar.gz"
        try:
            # Apicurio's parent POM is not on Maven Central, which the 3.x dependency plugin treats as fatal;
            # 2.8's `get` (Maven 3.8's own default) fetches the archive alone and can copy it out (-Ddest).
            self.stack.mvn(
                [
                    "org.apache.maven.plugins:maven-dependency-plugin:2.8:get",
                    f"-Dartifact={APICURIO_ARTIFACT}",
                    "-Dtransitive=false",
                    f"-Ddest={archive}",
                ],
                f"Apicurio Registry {APICURIO_VERSION}",
            )
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp / "app", filter="data")
                else:  # a Python without PEP 706's filters; the archive comes from Maven Central
                    tar.extractall(tmp / "app")
            shutil.rmtree(self.home, ignore_errors=True)
            (tmp / "app").rename(self.home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not self.jar.is_file():
            raise StackError(f"registry: {rel(self.jar)} is missing after unpacking {APICURIO_ARTIFACT}.")

    def command(self) -> list[str]:
        props = {
            "quarkus.http.host": HOST,
            "quarkus.http.port": self.port,
            "quarkus.http.access-log.enabled": "false",
            # One audit line per request is too much for a local log; warnings still show.
            'quarkus.log.category."io.apicurio.registry.logging.audit".level': "WARN",
            'quarkus.log.category."io.apicurio.registry.storage.metrics".level': "WARN",
            # Schemas persist in an H2 file: Kafka keeps messages that name their schema ids.
            "apicurio.storage.kind": "sql",
            "apicurio.storage.sql.kind": "h2",
            "apicurio.datasource.url": f"jdbc:h2:file:{self.datadir / 'registry'}",
            # Apicurio opens 20 connections at start and waits 5 s for one: on a loaded machine a
            # restart timed out ("Acquisition timeout while waiting for new connection"). One
            # connection to start with, and a minute to get one, are plenty for a local registry.
            "apicurio.datasource.jdbc.initial-size": "1",
            "apicurio.datasource.jdbc.min-size": "1",
            "quarkus.datasource.h2.jdbc.acquisition-timeout": "60S",
            # Confluent-like ids: one id per schema content, across subjects and whitespace variants.
            "apicurio.ccompat.legacy-id-mode.enabled": "false",
            "apicurio.ccompat.use-canonical-hash": "true",
            # Subjects and versions can be deleted, as with Confluent's registry.
            "apicurio.rest.deletion.artifact.enabled": "true",
            "apicurio.rest.deletion.artifact-version.enabled": "true",
            "apicurio.rest.deletion.group.enabled": "true",
        }
        return [
            self.stack.java(),
            "-Xms64m",
            "-Xmx512m",
            "-Djava.awt.headless=true",
            *(f"-D{key}={value}" for key, value in props.items()),
            "-jar",
            str(self.jar),
        ]

    def purge_paths(self) -> list[Path]:
        return [*super().purge_paths(), self.datadir]


class S3(Service):
    name = "s3"
    profile = "rest"
    port_env = "K2_S3_PORT"
    default_port = 9000
    health_text = "GET / answering 200"

    def python(self) -> str:
        raw = os.environ.get("K2_PYTHON") or ".venv/bin/python"
        path = shutil.which(raw) if "/" not in raw else str(Path(raw) if Path(raw).is_absolute() else ROOT / raw)
        if not path or not Path(path).is_file():
            raise StackError(
                f"s3: the Python that runs moto was not found ({raw}). Create the project's venv "
                "(python3 -m venv .venv && .venv/bin/pip install -e '.[dev]') or point K2_PYTHON at a Python "
                "that has moto[server]."
            )
        return path

    def healthy(self) -> bool:
        return http_status(f"{self.url}/") == 200

    def preflight(self) -> None:
        python = self.python()
        check = subprocess.run([python, "-c", "import moto.server"], capture_output=True, text=True, timeout=120)
        if check.returncode != 0:
            last = (check.stderr.strip().splitlines() or ["?"])[-1]
            raise StackError(
                f"s3: {python} cannot import moto.server ({last}). Install it: "
                f"{python} -m pip install 'moto[server]>=5,<6' (it is in the project's `dev` and `rest` extras)."
            )

    def command(self) -> list[str]:
        return [self.python(), "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def after_healthy(self) -> None:
        status = http_status(f"{self.url}/{S3_BUCKET}", method="PUT", timeout=10)
        if status not in (200, 409):
            raise StackError(f"s3: creating bucket {S3_BUCKET!r} answered {status}.\n{log_excerpt(self.log_path)}")

    def summary(self) -> str:
        return f"{self.url} (bucket {S3_BUCKET}, key {S3_KEY}/{S3_KEY}, region {S3_REGION})"


class RestCatalog(Service):
    name = "rest"
    profile = "rest"
    port_env = "K2_REST_PORT"
    default_port = 8181
    health_text = "GET /v1/config answering 200"

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self.home = stack.lib / "iceberg-rest"
        self.jar = self.home / f"iceberg-open-api-{ICEBERG_REST_VERSION}.jar"
        self.classes = self.home / "classes"
        self.datadir = stack.data / "rest"

    @property
    def database(self) -> Path:
        return self.datadir / "catalog.db"

    def reset_state(self) -> None:
        """Forget every namespace and table: the S3 bucket they point into is starting empty."""
        shutil.rmtree(self.datadir, ignore_errors=True)

    def healthy(self) -> bool:
        return http_status(f"{self.url}/v1/config") == 200

    def _stamp(self) -> str:
        return hashlib.sha256(REST_LAUNCHER.read_bytes() + self.jar.name.encode()).hexdigest()

    def _compiled(self) -> bool:
        stamp_file = self.classes / ".k2-source-sha256"
        return stamp_file.is_file() and stamp_file.read_text().strip() == self._stamp()

    def preflight(self) -> None:
        self.stack.java()
        if not self.jar.is_file():
            self.stack.need_mvn(f"the Iceberg REST catalog server {ICEBERG_REST_VERSION}")
        if not self._compiled() and java_bin("javac") is None:
            raise StackError(
                "rest: `javac` was not found; it compiles the small launcher that binds the REST catalog to "
                f"{HOST}. Install a JDK: {INSTALL_JAVA}"
            )

    def prepare(self) -> None:
        if not self.jar.is_file():
            self.stack.mvn(
                [f"{DEPENDENCY_PLUGIN}:copy", f"-Dartifact={ICEBERG_REST_ARTIFACT}", f"-DoutputDirectory={self.home}"],
                f"the Iceberg REST catalog server {ICEBERG_REST_VERSION}",
            )
        if self._compiled():
            return
        javac = java_bin("javac") or "javac"
        shutil.rmtree(self.classes, ignore_errors=True)
        proc = subprocess.run(
            [javac, "-nowarn", "-d", str(self.classes), "-cp", str(self.jar), str(REST_LAUNCHER)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise StackError(f"rest: compiling {rel(REST_LAUNCHER)} failed:\n{proc.stdout}{proc.stderr}")
        (self.classes / ".k2-source-sha256").write_text(self._stamp() + "\n")

    def spawn(self) -> subprocess.Popen[bytes]:
        self.datadir.mkdir(parents=True, exist_ok=True)
        return super().spawn()

    def command(self) -> list[str]:
        return [
            self.stack.java(),
            "-Xms64m",
            "-Xmx512m",
            "-Djava.awt.headless=true",
            f"-Dk2.rest.host={HOST}",
            f"-Dk2.rest.port={self.port}",
            "-cp",
            f"{self.classes}{os.pathsep}{self.jar}",
            "org.apache.iceberg.rest.LoopbackRESTCatalogServer",
        ]

    def environment(self) -> dict[str, str]:
        s3 = self.stack.service("s3")
        return {
            # CATALOG_* become catalog properties: '__' -> '-', '_' -> '.', lower case.
            "CATALOG_WAREHOUSE": f"s3://{S3_BUCKET}/",
            # A file, so the catalog survives its own restart. One connection: two SQLite connections that
            # both read and then write fail with SQLITE_BUSY whatever the busy timeout (lock upgrade deadlock).
            "CATALOG_URI": f"jdbc:sqlite:{self.database}?busy_timeout=30000",
            "CATALOG_CLIENTS": "1",
            "CATALOG_IO__IMPL": "org.apache.iceberg.aws.s3.S3FileIO",
            "CATALOG_S3_ENDPOINT": s3.url,
            "CATALOG_S3_PATH__STYLE__ACCESS": "true",
            "CATALOG_S3_ACCESS__KEY__ID": S3_KEY,
            "CATALOG_S3_SECRET__ACCESS__KEY": S3_KEY,
            "CATALOG_CLIENT_REGION": S3_REGION,
            "AWS_REGION": S3_REGION,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask the cloud metadata address for anything
        }

    def summary(self) -> str:
        s3 = self.stack.service("s3")
        return (
            f"{self.url} (catalog {rel(self.database)})\n"
            f"{'':14}pyiceberg: load_catalog('k2', type='rest', uri='{self.url}', "
            f"**{{'s3.endpoint': '{s3.url}', 's3.access-key-id': '{S3_KEY}', 's3.secret-access-key': '{S3_KEY}', "
            f"'s3.region': '{S3_REGION}', 's3.path-style-access': 'true'}})"
        )

    def purge_paths(self) -> list[Path]:
        return [*super().purge_paths(), self.datadir]


class Prometheus(Service):
    name = "prometheus"
    profile = "prometheus"
    port_env = "K2_PROMETHEUS_PORT"
    default_port = 9090
    health_text = "GET /-/ready answering 200"

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self.datadir = stack.var / "prometheus"

    def healthy(self) -> bool:
        return http_status(f"{self.url}/-/ready") == 200

    def binary(self) -> str:
        found = shutil.which("prometheus")
        if found is None:
            raise StackError(
                f"prometheus: the `prometheus` binary was not found. Install Debian's package: {INSTALL_PROMETHEUS}\n"
                "  (on a machine with systemd, then `systemctl disable --now prometheus` so that Debian's own "
                "service does not hold port 9090)."
            )
        return found

    def preflight(self) -> None:
        self.binary()

    def prepare(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            self.binary(),
            f"--config.file={PROMETHEUS_CONFIG}",
            f"--storage.tsdb.path={self.datadir}",
            f"--web.listen-address={HOST}:{self.port}",
        ]

    def purge_paths(self) -> list[Path]:
        return [*super().purge_paths(), self.datadir]


# ------------------------------------------------------------------------- commands


def cmd_up(stack: Stack, profiles: set[str]) -> int:
    print(f"k2 stack up (profiles: {', '.join(sorted(profiles)) or 'none'}; data in {rel(stack.var)})", flush=True)
    return bring_up(stack, stack.selected(profiles))


def bring_up(stack: Stack, services: list[Service]) -> int:
    """Start those of ``services`` that are not running and wait until all of them are healthy."""
    started_at = time.monotonic()
    with stack.locked():
        running = {s.name: s.find_pid() for s in services}
        to_start = [s for s in services if running[s.name] is None]
        # The catalog's tables point into the bucket: a fresh (empty) S3 needs a fresh catalog.
        restart = [
            s for s in services if s.name == "rest" and running[s.name] and any(t.name == "s3" for t in to_start)
        ]

        problems = []
        for service in services:
            pid = running[service.name]
            if pid is not None:
                try:
                    service.check_same_ports(pid)
                except StackError as exc:
                    problems.append(exc)
        for service in to_start + restart:
            checks = [service.preflight] if service in restart else [service.check_ports, service.preflight]
            for check in checks:
                try:
                    check()
                except StackError as exc:
                    problems.append(exc)
        if problems:
            raise StackError("\n\nERROR: ".join(dict.fromkeys(str(p) for p in problems)))

        for service in restart:
            print(f"  restarting {service.name}: the S3 API it uses is being started afresh", flush=True)
            service.stop(running[service.name] or 0)
        to_start = [s for s in services if s in to_start or s in restart]
        if any(s.name == "s3" for s in to_start):
            for service in to_start:
                if isinstance(service, RestCatalog):
                    service.reset_state()
        for service in to_start:
            service.prepare()

        procs: dict[str, subprocess.Popen[bytes]] = {}
        spawned_at = time.monotonic()
        for service in to_start:
            procs[service.name] = service.spawn()
            running[service.name] = procs[service.name].pid
            print(f"  started {service.name} (pid {procs[service.name].pid})", flush=True)

        failures = []
        for service in services:
            pid = running[service.name] or 0
            try:
                if service.name not in procs and not service.healthy():
                    print(f"  {service.name} (pid {pid}) is running but not healthy yet; waiting", flush=True)
                service.wait_healthy(pid, procs.get(service.name), spawned_at + stack.timeout)
                service.after_healthy()
                if service.name in procs:
                    print(f"  {service.name} healthy after {time.monotonic() - spawned_at:.1f}s", flush=True)
            except StackError as exc:
                failures.append(exc)

    if failures:
        for failure in failures:
            print(f"\nERROR: {failure}", file=sys.stderr)
        print("\nk2 stack: not up. Services that did start keep running; `stack.py down` stops them.", file=sys.stderr)
        return 1
    print(f"k2 stack is up ({time.monotonic() - started_at:.1f}s):")
    for service in services:
        state = "started" if service.name in procs else "already up"
        print(f"  {service.name:<11} {service.summary()}")
        print(f"  {'':<11} pid {running[service.name]} ({state}), log {rel(service.log_path)}")
    return 0


def cmd_down(stack: Stack, purge: bool) -> int:
    ok = True
    with stack.locked():
        for service in reversed(stack.services):
            pid = service.find_pid()
            if pid is None:
                with contextlib.suppress(OSError):
                    service.pid_path.unlink()
                continue
            if service.stop(pid):
                print(f"  stopped {service.name} (pid {pid})")
            else:
                ok = False
                print(f"ERROR: {service.name} (pid {pid}) is still running after SIGKILL.", file=sys.stderr)
        if purge and ok:
            for service in stack.services:
                for path in service.purge_paths():
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
            with contextlib.suppress(OSError):
                (stack.log / "maven.log").unlink()
            print(f"  purged the stack's data and logs under {rel(stack.var)} (downloads in {rel(stack.lib)} kept)")
        elif purge:
            print("ERROR: not purging while a service is still running.", file=sys.stderr)
    print("k2 stack is down." if ok else "k2 stack: some processes could not be stopped.")
    return 0 if ok else 1


def named(stack: Stack, names: list[str]) -> list[Service]:
    known = [s.name for s in stack.services]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return [stack.service(n) for n in dict.fromkeys(names)]


def cmd_start(stack: Stack, names: list[str]) -> int:
    """``up`` for the named services only; a fresh S3 also restarts a running catalog (see ``bring_up``)."""
    services = named(stack, names)
    rest = stack.service("rest")
    if any(s.name == "s3" for s in services) and rest not in services and rest.find_pid() is not None:
        services.append(rest)
    print(f"k2 stack start {' '.join(s.name for s in services)} (data in {rel(stack.var)})", flush=True)
    return bring_up(stack, services)


def cmd_stop(stack: Stack, names: list[str], kill: bool) -> int:
    """Stop the named services: SIGTERM (then SIGKILL after their stop timeout), or SIGKILL at once."""
    ok = True
    with stack.locked():
        for service in named(stack, names):
            pid = service.find_pid()
            if pid is None:
                print(f"  {service.name} is not running")
                continue
            if kill:
                signal_process(pid, signal.SIGKILL)
                stopped = service._wait_exit(pid, 10)
                if stopped:
                    with contextlib.suppress(OSError):
                        service.pid_path.unlink()
            else:
                stopped = service.stop(pid)
            if stopped:
                print(f"  {'killed' if kill else 'stopped'} {service.name} (pid {pid})")
            else:
                ok = False
                print(f"ERROR: {service.name} (pid {pid}) is still running.", file=sys.stderr)
    return 0 if ok else 1


def cmd_signal(stack: Stack, names: list[str], sig: signal.Signals) -> int:
    """SIGSTOP (freeze) or SIGCONT (thaw) the named services' processes."""
    ok = True
    for service in named(stack, names):
        pid = service.find_pid()
        if pid is None:
            ok = False
            print(f"ERROR: {service.name} is not running.", file=sys.stderr)
            continue
        signal_process(pid, sig)
        print(f"  {'froze' if sig == signal.SIGSTOP else 'thawed'} {service.name} (pid {pid})")
    return 0 if ok else 1


def cmd_status(stack: Stack, profiles: set[str]) -> int:
    requested = stack.selected(profiles)
    all_ok = True
    print(f"{'service':<11} {'pid':>7}  {'healthy':<7}  {'address':<40} log")
    for service in stack.services:
        pid = service.find_pid()
        wanted = service in requested
        if not wanted and pid is None:
            continue
        healthy = service.healthy()
        all_ok = all_ok and (healthy or not wanted)
        note = "" if wanted else "  (profile not requested)"
        if pid is None and healthy:
            note += "  (answers, but not started by this script)"
        elif pid is None:
            taken = [port for port, _ in service.ports() if not port_free(port)]
            if taken:
                note += f"  (port {taken[0]} held by another process: ss -ltnp 'sport = :{taken[0]}')"
        print(
            f"{service.name:<11} {pid or '-':>7}  {'yes' if healthy else 'no':<7}  {service.url:<40} "
            f"{rel(service.log_path)}{note}"
        )
    return 0 if all_ok else 3


def parse_profiles(values: list[str] | None) -> set[str]:
    profiles: set[str] = set()
    for value in values or []:
        for item in value.replace(" ", ",").split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in PROFILES:
                raise argparse.ArgumentTypeError(f"unknown profile {item!r} (known: {', '.join(PROFILES)})")
            profiles.add(item)
    return profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack.py",
        description="Start, stop or check K2's local stack (no Docker). See the module docstring for details.",
    )
    parser.add_argument("command", choices=("up", "down", "status", "start", "stop", "freeze", "thaw"))
    parser.add_argument("services", nargs="*", metavar="NAME", help="with start, stop, freeze, thaw: the services")
    parser.add_argument("--kill", action="store_true", help="with stop: SIGKILL at once instead of SIGTERM")
    parser.add_argument(
        "--profile",
        action="append",
        metavar="NAME",
        help=f"add optional services: {', '.join(PROFILES)} (repeat, or separate with commas)",
    )
    parser.add_argument("--purge", action="store_true", help="with down: also delete the stack's data and logs")
    args = parser.parse_intermixed_args(argv)  # `stop --kill rest` as well as `stop rest --kill`
    try:
        profiles = parse_profiles(args.profile)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.purge and args.command != "down":
        parser.error("--purge goes with `down`")
    if args.kill and args.command != "stop":
        parser.error("--kill goes with `stop`")
    per_service = args.command in ("start", "stop", "freeze", "thaw")
    if per_service and not args.services:
        parser.error(f"`{args.command}` needs the name of at least one service")
    if args.services and not per_service:
        parser.error(f"`{args.command}` takes no service names (it acts on the profiles)")
    try:
        stack = Stack()
        if args.command == "start":
            return cmd_start(stack, args.services)
        if args.command == "stop":
            return cmd_stop(stack, args.services, args.kill)
        if args.command in ("freeze", "thaw"):
            return cmd_signal(stack, args.services, signal.SIGSTOP if args.command == "freeze" else signal.SIGCONT)
        if args.command == "up":
            return cmd_up(stack, profiles)
        if args.command == "down":
            return cmd_down(stack, args.purge)
        return cmd_status(stack, profiles)
    except StackError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; services already started keep running (`stack.py down` stops them).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
