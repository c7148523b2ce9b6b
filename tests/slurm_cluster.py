"""A real single-node SLURM cluster for the launcher tests: munged, slurmctld and slurmd on localhost, as root.

Everything lives in one temporary directory (munge key and socket, slurm.conf, state and spool dirs, logs); nothing
under /etc is read or written. The daemons run in the foreground as children of the test process and are stopped
when the session ends. Slurm's commands (and submitit, which calls sbatch/squeue/sacct) find the config through
``SLURM_CONF``, which the fixture sets in ``os.environ`` for the session and gives in ``cluster.env``.

Needs the Debian/Ubuntu packages: ``apt-get install -y slurm-wlm munge``. Where they are missing, the process is not
root or a daemon does not come up, the fixture skips with the reason (and the tail of the daemon's log).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "debug"
NODE = "localhost"
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "sacct", "scancel")


class ClusterError(RuntimeError):
    """The cluster could not start; the message says why."""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    partition: str = PARTITION
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=dict(os.environ, **self.env), capture_output=True, text=True, timeout=timeout, check=False
        )

    def node_state(self) -> str:
        p = self.run("sinfo", "--noheader", "--Node", "--format=%T", "--nodes", NODE)
        return p.stdout.strip() if p.returncode == 0 else f"sinfo failed: {p.stderr.strip()}"

    def jobs(self) -> list[str]:
        p = self.run("squeue", "--noheader", "--format=%i %T")
        return [ln for ln in p.stdout.splitlines() if ln.strip()]

    def logs(self, lines: int = 15) -> str:
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            f = self.root / name
            if f.is_file():
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> dict[str, str]:
    """The node line's hardware as slurmd itself detects it (``slurmd -C``): CPUs, sockets, cores, threads, memory."""
    p = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=False)
    first = p.stdout.splitlines()[0] if p.returncode == 0 and p.stdout else ""
    hw = dict(re.findall(r"(\w+)=(\S+)", first))
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    if not all(k in hw for k in ("CPUs", "RealMemory")):
        raise ClusterError(f"slurmd -C did not report the node's hardware: {p.stdout!r} {p.stderr!r}")
    return {k: hw[k] for k in keep if k in hw}


def _write_conf(root: Path, hw: dict[str, str]) -> Path:
    node = " ".join(f"{k}={v}" for k, v in hw.items())
    conf = root / "slurm.conf"
    conf.write_text(
        f"""# written by tests/slurm_cluster.py: a single-node test cluster, no cgroups, no accounting database
ClusterName=sslbenchtest
SlurmctldHost={NODE}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge" / "munge.socket"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={NODE} {node} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _die_with_parent() -> None:
    """In the daemon's child process: the kernel sends it SIGTERM when the test process dies (even by kill -9), so a
    killed test run leaves no daemon behind."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(cluster: SlurmCluster, *cmd: str) -> subprocess.Popen:
    log = open(cluster.root / f"{Path(cmd[0]).name}.out", "ab")  # noqa: SIM115 (closed with the process)
    p = subprocess.Popen(
        cmd,
        env=dict(os.environ, **cluster.env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    cluster.procs.append(p)
    return p


def _wait(what: str, cluster: SlurmCluster, ok, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in cluster.procs if p.poll() is not None]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}\n{cluster.logs()}")
        if ok():
            return
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{cluster.logs()}")


def start(root: Path) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root``; return once the node is idle. Raises ClusterError."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise ClusterError(f"not installed: {', '.join(missing)} (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        raise ClusterError("the test cluster's daemons run as root; this process is not root")
    for d in ("munge", "state", "spool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cluster = SlurmCluster(root=root, conf=_write_conf(root, _node_hardware()))
    try:
        _spawn(
            cluster,
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={root / 'munge' / 'munge.socket'}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        )
        _wait("munged's socket", cluster, (root / "munge" / "munge.socket").exists, 30)
        _spawn(cluster, "slurmctld", "-D", "-i", "-f", str(cluster.conf))
        _wait("slurmctld", cluster, lambda: cluster.run("sinfo", "--noheader").returncode == 0, 60)
        _spawn(cluster, "slurmd", "-D", "-N", NODE, "-f", str(cluster.conf))
        _wait("the node to be idle", cluster, lambda: cluster.node_state() == "idle", 90)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running single-node cluster for the session; SLURM_CONF is set in os.environ while it runs. Skips (with
    the reason) where the daemons cannot start."""
    # a short path: munge's socket path must fit a sockaddr_un (108 bytes)
    root = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    try:
        cluster = start(root)
    except (ClusterError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"no SLURM test cluster: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        for line in cluster.jobs():
            cluster.run("scancel", line.split()[0])
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
