"""Apache Spark with the Java Iceberg runtime, as a reader of K2's lake: jars, one JVM, catalogs.

Nothing of Spark or Iceberg is in the repository. pyspark comes from PyPI (the ``interop``
extra, installed by ``make test`` and ``make test-interop``); the Iceberg runtime for Spark,
``iceberg-aws-bundle`` (S3FileIO for the REST catalog over S3) and ``sqlite-jdbc`` (Java's
JdbcCatalog reads the embedded catalog's SQLite file as it is) come from Maven Central,
copied by Maven's dependency plugin into ``var/interop/jars-<hash>/`` on first use (through
Maven's own repository, ``~/.m2``).

One SparkSession per test session (a JVM takes ~10 s to start and ~1 GiB to run); each
lake gets a child session of its own (:meth:`SparkSession.newSession`: same JVM, its own
SQL configuration and so its own catalogs), since the embedded catalog must be called
``k2`` in Spark too: JdbcCatalog selects its rows by the catalog's name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyspark is an extra: imported when a session starts, not when tests are collected
    from pyspark.sql import SparkSession

__all__ = [
    "ICEBERG_VERSION",
    "JARS",
    "SPARK_MINOR",
    "InteropSetupError",
    "jdbc_catalog",
    "resolve_jars",
    "rest_catalog",
    "session_with_catalog",
    "start_spark",
]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "var" / "interop"

SPARK_MINOR = "4.1"
"""pyspark's minor version; the runtime jar is built per Spark minor (``-4.1_2.13``)."""
ICEBERG_VERSION = "1.12.0"
SQLITE_JDBC_VERSION = "3.51.1.0"
JARS: tuple[str, ...] = (
    f"org.apache.iceberg:iceberg-spark-runtime-{SPARK_MINOR}_2.13:{ICEBERG_VERSION}",
    f"org.apache.iceberg:iceberg-aws-bundle:{ICEBERG_VERSION}",
    f"org.xerial:sqlite-jdbc:{SQLITE_JDBC_VERSION}",
)
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MAVEN_TIMEOUT_S = 900

# local[2] on the 2-core machine; shuffles of a few thousand rows need no more than 2 partitions.
SPARK_CONF: Mapping[str, str] = {
    "spark.driver.memory": "1g",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    # Instants print and convert as UTC; Arrow timestamps from Spark carry this zone.
    "spark.sql.session.timeZone": "UTC",
}


class InteropSetupError(RuntimeError):
    """Spark or its jars could not be set up; the message says what to install or where to look."""


def resolve_jars(cache: Path = CACHE) -> list[Path]:
    """The jars of :data:`JARS`, copied from Maven Central on first use and cached.

    The folder is named by a hash of the coordinates, so a version change resolves anew
    beside the old one, and it appears only once complete (built under a temporary name,
    then renamed), so an interrupted copy is never taken for a finished one.
    """
    target = cache / f"jars-{hashlib.sha256(' '.join(JARS).encode()).hexdigest()[:12]}"
    if not (target / ".complete").is_file():
        _copy_jars(target)
    return sorted(target.glob("*.jar"))


def _pom(coordinates: tuple[str, ...]) -> str:
    """A POM that only names ``coordinates``, for Maven to copy them (and nothing they depend on) in one run."""
    deps = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in (c.split(":") for c in coordinates)
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>k2.tests</groupId><artifactId>interop-jars</artifactId><version>0</version>"
        f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>\n"
    )


def _copy_jars(target: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InteropSetupError("`mvn` was not found; it fetches Iceberg's Spark runtime: apt-get install maven")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".jars.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "pom.xml").write_text(_pom(JARS))
        goal = f"{DEPENDENCY_PLUGIN}:copy-dependencies"
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(tmp / "pom.xml"),
            goal,
            "-DexcludeTransitive=true",
            f"-DoutputDirectory={tmp}",
        ]
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise InteropSetupError(
                f"Maven did not copy {JARS} in {MAVEN_TIMEOUT_S}s: is Maven Central reachable?"
            ) from None
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip()[-2000:]
            raise InteropSetupError(f"Maven failed to copy {JARS} (exit {done.returncode}):\n{said}")
        (tmp / ".complete").write_text("\n".join(JARS) + "\n")
        if not (target / ".complete").is_file():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def start_spark(jars: list[Path], driver_memory: str = SPARK_CONF["spark.driver.memory"]) -> SparkSession:
    """One local Spark (``local[2]``) with the Iceberg runtime on its classpath.

    Raises:
        InteropSetupError: pyspark is not installed, or is not the Spark minor the runtime jar is for.
    """
    try:
        import pyspark
        from pyspark.sql import SparkSession
    except ImportError:
        raise InteropSetupError(
            "pyspark is not installed in this venv: `make interop-deps` installs it (pip install -e '.[interop]')"
        ) from None
    if not pyspark.__version__.startswith(f"{SPARK_MINOR}."):
        raise InteropSetupError(
            f"pyspark {pyspark.__version__} is installed, but the Iceberg runtime jar is built for Spark "
            f"{SPARK_MINOR}: `make interop-deps` installs the pinned pyspark"
        )
    builder = SparkSession.builder.master("local[2]").appName("k2-interop")
    for key, value in {**SPARK_CONF, "spark.driver.memory": driver_memory}.items():
        builder = builder.config(key, value)
    session = builder.config("spark.jars", ",".join(str(j) for j in jars)).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def jdbc_catalog(database: Path, warehouse: str) -> dict[str, str]:
    """Java's JdbcCatalog over pyiceberg's SqlCatalog file (the same two tables, V1 with ``iceberg_type``)."""
    return {
        "type": "jdbc",
        "uri": f"jdbc:sqlite:{database}",
        "jdbc.schema-version": "V1",
        "warehouse": warehouse,
    }


def rest_catalog(pyiceberg_properties: Mapping[str, str]) -> dict[str, str]:
    """Java's RESTCatalog with S3FileIO, from the properties pyiceberg is given for the same catalog."""
    props = dict(pyiceberg_properties)
    conf = {"type": "rest", "uri": props.pop("uri"), "io-impl": "org.apache.iceberg.aws.s3.S3FileIO"}
    props.pop("type", None)
    if "s3.region" in props:  # pyiceberg's key; Java's S3FileIO takes the client's region
        conf["client.region"] = props.pop("s3.region")
    conf.update(props)  # s3.endpoint, s3.access-key-id, s3.secret-access-key, s3.path-style-access: same keys
    return conf


def session_with_catalog(spark: SparkSession, name: str, properties: Mapping[str, str]) -> SparkSession:
    """A child session of ``spark`` with an Iceberg catalog ``name`` that reloads tables on every read.

    ``cache-enabled=false``: the catalog loads a table's current metadata on each query, so
    Spark sees what K2 committed since (Iceberg's own cache would keep the old snapshot).
    """
    session = spark.newSession()
    session.conf.set(f"spark.sql.catalog.{name}", "org.apache.iceberg.spark.SparkCatalog")
    for key, value in {**properties, "cache-enabled": "false"}.items():
        session.conf.set(f"spark.sql.catalog.{name}.{key}", value)
    return session
