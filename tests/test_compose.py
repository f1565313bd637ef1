"""docker-compose.yml as compose itself reads it (`docker-compose config` validates offline)."""

import os
import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.system import program

ENV_EXAMPLE = ROOT / ".env.example"


def compose_config(env_file, *files: str) -> subprocess.CompletedProcess:
    # Only the env file speaks: variables of the developer's shell must not fill a gap in it.
    env = {k: v for k, v in os.environ.items() if k not in env_settings(ENV_EXAMPLE)}
    args = [program("docker-compose", "docker-compose"), "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for f in files or ("docker-compose.yml",):
        args += ["-f", str(ROOT / f)]
    return subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, env=env)


def env_settings(path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "test.env"
    settings = {**env_settings(ENV_EXAMPLE), "POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_PASSWORD": "s3-secret"}
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return path


def test_stack_is_postgres_minio_and_a_proxying_mlflow_server(env_file):
    done = compose_config(env_file)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert "--backend-store-uri=postgresql://mlflow:pg-secret@postgres:5432/mlflow" in command
    assert "--artifacts-destination=s3://mlflow/artifacts" in command and "--serve-artifacts" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["AWS_SECRET_ACCESS_KEY"] == "s3-secret"
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "s3-secret"
    # The server starts only once its stores are healthy and the bucket exists.
    assert mlflow["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
        "create-bucket": {"condition": "service_completed_successfully"},
    }
    assert "mc mb --ignore-existing" in " ".join(services["create-bucket"]["entrypoint"])
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    # The UI is published on loopback only.
    (port,) = mlflow["ports"]
    if isinstance(port, str):  # docker-compose v1 prints the short form, Compose v2 the long one
        port = dict(zip(("host_ip", "published", "target"), port.removesuffix("/tcp").split(":")))
    assert (port["host_ip"], str(port["published"]), str(port["target"])) == ("127.0.0.1", "5000", "5000")


def mounts(service: dict) -> set[tuple[str, str]]:
    """(volume, path in the container) of each mount: docker-compose v1 prints `name:path:rw`, Compose v2 the long form."""
    found = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found.add((source, target))
    return found


def test_named_volumes_keep_metadata_and_artifacts(env_file):
    config = yaml.safe_load(compose_config(env_file).stdout)
    assert {"postgres-data", "minio-data", "trainer-runs"} <= set(config["volumes"])
    assert ("postgres-data", "/var/lib/postgresql/data") in mounts(config["services"]["postgres"])
    assert ("minio-data", "/data") in mounts(config["services"]["minio"])


def test_trainer_runs_seglab_on_the_gpu_against_the_server(env_file):
    trainer = yaml.safe_load(compose_config(env_file).stdout)["services"]["trainer"]
    assert trainer["entrypoint"] == ["python", "-m", "seglab", "tracking.uri=http://mlflow:5000"]
    assert trainer["build"]["context"] == str(ROOT)
    (device,) = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert trainer["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    steps = dockerfile_instructions(ROOT / "Dockerfile")
    (image,) = [args for op, args in steps if op == "FROM"]
    name, tag = image.split(":")
    assert name == "tensorflow/tensorflow" and tag.endswith("-gpu")
    # A normal install of the package alone, not an editable one: the configs travel as package data (conf/).
    assert [args for op, args in steps if op == "RUN" and args.split()[:2] == ["pip", "install"]] == ["pip install --no-cache-dir ."]
    assert sorted(src for op, args in steps if op == "COPY" for src in args.split()[:-1]) == ["README.md", "conf", "experiments", "pyproject.toml", "seglab"]
    assert ("ENTRYPOINT", '["python", "-m", "seglab"]') in steps


def dockerfile_instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_a_missing_credential_stops_compose_naming_it(tmp_path, env_file):
    lacking = tmp_path / "lacking.env"
    lacking.write_text("".join(l + "\n" for l in env_file.read_text().splitlines() if not l.startswith("POSTGRES_PASSWORD=")))
    done = compose_config(lacking)
    assert done.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in done.stderr


def test_basic_auth_override(env_file):
    done = compose_config(env_file, "docker-compose.yml", "docker-compose.auth.yml")
    assert done.returncode == 0, done.stderr
    mlflow = yaml.safe_load(done.stdout)["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert "--backend-store-uri=postgresql://mlflow:pg-secret@postgres:5432/mlflow" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "change-me-admin"
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"


def test_env_file_is_not_committed():
    ignored = subprocess.run([program("git", "git"), "-C", str(ROOT), "check-ignore", "-q", ".env"], timeout=10)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert ENV_EXAMPLE.exists()


def test_env_example_sets_every_variable_compose_reads():
    import re

    used = set()
    for name in ("docker-compose.yml", "docker-compose.auth.yml"):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / name).read_text()))
    assert used <= set(env_settings(ENV_EXAMPLE)), sorted(used - set(env_settings(ENV_EXAMPLE)))
