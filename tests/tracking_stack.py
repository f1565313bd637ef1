"""The docker-compose tracking stack as local processes on loopback, from the same settings
(.env.example): a real PostgreSQL server, an S3 endpoint standing in for MinIO (moto's server)
with the bucket created as the compose stack creates it, and `mlflow server` on PostgreSQL with
`--artifacts-destination s3://...`, proxying artifacts.  Every process is started here, in its own
process group, and stopped here; every wait is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, run_cli
from tests.system import postgres_bin

STARTUP_TIMEOUT_S = 120  # mlflow server migrates a fresh PostgreSQL schema on its first start
S3_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_settings() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe nobody reads
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL to the process group we started (a server and its workers): the servers here keep
    their state in PostgreSQL and S3, and a kill is what "the server went away" means."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


class Postgres:
    """initdb + pg_ctl in a temporary directory on a free port, password auth over TCP as in compose.
    PostgreSQL refuses to run as root, so under root it runs as the `postgres` system user."""

    def __init__(self, user: str, password: str, database: str):
        self.bin = postgres_bin()
        self.user, self.password, self.database = user, password, database
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="seglab-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> "Postgres":
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self.as_user:
            shutil.chown(pwfile, "postgres")
        self._run(f"{self.bin}/initdb", "-D", f"{self.dir}/data", "-U", self.user, f"--pwfile={pwfile}", "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=scram-sha-256")
        self._run(f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/server.log", "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        self.new_database(self.database)
        return self

    @property
    def uri(self) -> str:
        return self.uri_of(self.database)

    def uri_of(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """An empty database `name` on this server (no MLflow tables yet); its URI."""
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run([f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
                       check=True, capture_output=True, timeout=30, env=env)
        return self.uri_of(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "-t", "30", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def mlflow_server(port: int, backend: str, artifacts: str, log: Path, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    """`mlflow server` with the flags of docker-compose.yml's mlflow service, on loopback."""
    proc = start(
        [sys.executable, "-m", "mlflow", "server", "--host=127.0.0.1", f"--port={port}", "--workers=1",
         f"--backend-store-uri={backend}", f"--artifacts-destination={artifacts}", "--serve-artifacts"],
        log, env={**os.environ, **(env or {})},
    )
    if wait:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
    return proc


@dataclass
class Stack:
    uri: str  # what clients use: tracking.uri=http://127.0.0.1:PORT
    s3: object  # boto3 client of the S3 endpoint (to look into the bucket behind the proxy)
    bucket: str
    logs: Path
    backend: str  # the PostgreSQL URI
    s3_env: dict  # what the server needs to reach S3
    procs: list  # every process started, stopped at the end of the session
    spare: subprocess.Popen | None = None  # a second server on the same stores, for the test that kills one mid-run
    spare_uri: str = ""

    def start_spare(self) -> None:
        """Start the spare server without waiting, so it comes up while other tests run."""
        if self.spare is None:
            self.spare_uri = f"http://127.0.0.1:{free_port()}"
            self.spare = mlflow_server(int(self.spare_uri.rsplit(":", 1)[1]), self.backend, f"s3://{self.bucket}/artifacts",
                                       self.logs / "spare.log", env=self.s3_env, wait=False)
            self.procs.append(self.spare)

    def spare_server(self) -> subprocess.Popen:
        self.start_spare()
        wait_http(f"{self.spare_uri}/health", self.spare, self.logs / "spare.log")
        return self.spare


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server alone (no MLflow server in front), for tests that give seglab a postgresql:// store."""
    settings = env_settings()
    server = Postgres(settings["POSTGRES_USER"], settings["POSTGRES_PASSWORD"], settings["POSTGRES_DB"])
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tracking_stack(tmp_path_factory):
    settings = env_settings()
    logs = tmp_path_factory.mktemp("stack")
    postgres = Postgres(settings["POSTGRES_USER"], settings["POSTGRES_PASSWORD"], settings["POSTGRES_DB"])
    s3_port = free_port()  # the S3 endpoint starts while PostgreSQL initialises
    procs = [start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], logs / "s3.log")]
    try:
        postgres.start()
        wait_http(f"http://127.0.0.1:{s3_port}/", procs[0], logs / "s3.log")
        s3_env = {
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": settings["MINIO_ROOT_USER"],
            "AWS_SECRET_ACCESS_KEY": settings["MINIO_ROOT_PASSWORD"],
            "AWS_DEFAULT_REGION": S3_REGION,
        }
        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_env["MLFLOW_S3_ENDPOINT_URL"], region_name=S3_REGION,
                          aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
        bucket = settings["MLFLOW_BUCKET"]
        # compose's create-bucket service: `mc mb --ignore-existing local/$MLFLOW_BUCKET`
        if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=bucket)
        port = free_port()
        # Only the server gets S3 credentials; clients (and this test process) go through its proxy.
        procs.append(mlflow_server(port, postgres.uri, f"s3://{bucket}/artifacts", logs / "mlflow.log", env=s3_env))
        yield Stack(uri=f"http://127.0.0.1:{port}", s3=s3, bucket=bucket, logs=logs, backend=postgres.uri, s3_env=s3_env, procs=procs)
    finally:
        for proc in reversed(procs):
            stop(proc)
        postgres.stop()


@pytest.fixture(scope="session")
def stack_run(tracking_stack, tmp_path_factory):
    """One tiny training through `python -m seglab` logged to the stack: (run id, its output dir, CLI result)."""
    from mlflow import MlflowClient

    cwd = tmp_path_factory.mktemp("stack-train")
    done = run_cli(*TINY, f"tracking.uri={tracking_stack.uri}", f"hydra.run.dir={cwd}/out", cwd=cwd)
    client = MlflowClient(tracking_stack.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    tracking_stack.start_spare()  # the schema is migrated now; it comes up while the next tests run
    return run.info.run_id, cwd / "out", done
