"""A real one-node SLURM cluster as local processes: `munged` with its own key and socket, then
`slurmctld -D` and `slurmd -D -N localhost` on a slurm.conf generated here, all under one temporary
directory.  Clients (sbatch, squeue, scontrol, submitit's calls to them) find the cluster through
`SLURM_CONF`, which the fixture sets for this process and therefore for every process it starts.
Nothing is installed here (.ci/run installs slurm-wlm and munge); every process is started here,
stopped here by its PID, and every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import program
from tests.tracking_stack import free_port, start

STARTUP_TIMEOUT_S = 60
NODE_MEMORY_MB = 8000  # what slurmd offers; the tests' jobs ask for mem_gb=1
# KillWait 5 s, not SLURM's default 30: with 30 a USR2-preempted job was requeued and never ran again within 600 s
# (clean-clone CI at 749cc71); with 5 a job on a loaded machine was once SIGKILLed before it had ended its run KILLED.

SLURM_CONF = """\
ClusterName=seglab-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
NodeName=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    conf: Path  # the slurm.conf clients read (SLURM_CONF)
    logs: Path  # slurmctld.log, slurmd.log, munged.log

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def scontrol(self, *args: str) -> str:
        return self._client("scontrol", *args)

    def scancel(self, *args: str) -> str:
        return self._client("scancel", *args)

    def squeue(self) -> list[str]:
        """The ids of the jobs SLURM lists (pending, running, completing), one per array task."""
        return self._client("squeue", "--noheader", "--array", "--format=%i").split()

    def _client(self, command: str, *args: str) -> str:
        return subprocess.run([command, *args], check=True, capture_output=True, text=True, timeout=30,
                              env={**os.environ, **self.env()}).stdout

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.logs.glob("*.log")))


def _wait(what: str, ready, procs: list, cluster: Cluster) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{dead[0].args[0]} exited {dead[0].returncode} before {what}:\n{cluster.log_tail()}")
        time.sleep(0.3)
    raise TimeoutError(f"no {what} after {STARTUP_TIMEOUT_S} s:\n{cluster.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: slurmd then ends the job steps it started, slurmctld saves its state."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _node_idle(env: dict) -> bool:
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], check=False, capture_output=True, text=True, timeout=10, env=env)
    return done.returncode == 0 and done.stdout.strip() == "idle"


def _munge(root: Path, logs: Path) -> tuple[list[str], Path]:
    """munged's command line with its own key, socket, pid and seed files.  munged refuses a key or
    socket directory that others can write to, hence the modes; as root it needs --force."""
    key = root / "munge" / "munge.key"
    key.parent.mkdir(mode=0o700)
    subprocess.run([program("mungekey", "munge"), "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30)
    sock = root / "munge" / "munge.socket"
    args = [program("munged", "munge"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
            f"--log-file={logs}/munged.log", f"--pid-file={root}/run/munged.pid", f"--seed-file={root}/munge/munged.seed"]
    return args, sock


@pytest.fixture(scope="session")
def slurm_cluster():
    slurmctld = program("slurmctld", "slurm-wlm")
    slurmd = program("slurmd", "slurm-wlm")
    program("sbatch", "slurm-wlm")
    root = Path(tempfile.mkdtemp(prefix="seglab-slurm-"))
    root.chmod(0o755)  # munged checks every directory above its socket and key
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir()
    logs = root / "log"
    munge_args, sock = _munge(root, logs)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, munge_socket=sock, cpus=os.cpu_count(), memory=NODE_MEMORY_MB,
                                      ctld_port=free_port(), d_port=free_port()))
    cluster = Cluster(conf=conf, logs=logs)
    env = {**os.environ, **cluster.env()}
    procs: list[subprocess.Popen] = []
    old_conf = os.environ.get("SLURM_CONF")
    try:
        procs.append(start(munge_args, logs / "munged.out"))
        _wait("munge socket", sock.exists, procs, cluster)
        procs.append(start([slurmctld, "-D", "-i", "-f", str(conf)], logs / "slurmctld.out", env=env))
        procs.append(start([slurmd, "-D", "-N", "localhost", "-f", str(conf)], logs / "slurmd.out", env=env))
        _wait("idle node in sinfo", lambda: _node_idle(env), procs, cluster)
        os.environ["SLURM_CONF"] = str(conf)  # submitit calls sbatch/sacct/scontrol with this process's environment
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if procs and procs[-1].poll() is None:  # no job outlives the session
            subprocess.run(["scancel", "--full", "--user=root"], check=False, capture_output=True, timeout=30, env=env)
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
