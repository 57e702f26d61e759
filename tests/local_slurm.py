"""A one-node SLURM cluster on localhost for the tests: Debian's slurm-wlm and munge, started and stopped by PID.

`LocalSlurm(folder)` as a context manager writes /etc/slurm/slurm.conf (the only place every SLURM tool finds
it: Snakemake's jobstep plugin drops SLURM_CONF), backing up one that exists; creates a munge key if there is
none; starts munged (unless one already answers), slurmctld and `slurmd -N localhost` in the foreground, so
the PIDs we hold are the daemons'; waits until `sinfo` shows the node idle. On exit it cancels what is left,
stops the daemons it started by PID and puts the configuration back. A lock file keeps two test runs on one
machine from sharing the fixed SLURM ports.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scontrol", "scancel", "srun")


def which(name: str) -> str | None:
    """A SLURM or munge program; the daemons live in sbin, which a non-login PATH may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def missing() -> str | None:
    """Why no local cluster can be started here, or None."""
    absent = [name for name in DAEMONS + CLIENTS if which(name) is None]
    if absent:
        return f"SLURM/munge not installed (no {', '.join(absent)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (it writes /etc/slurm/slurm.conf and runs slurmd)"
    return None


def node_line() -> str:
    """This machine's node definition as slurmd detects it (CPUs, sockets, cores, memory), named localhost."""
    detected = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0].split()
    fields = [field for field in detected if not field.startswith(("NodeName=", "UpTime="))]
    return " ".join(["NodeName=localhost", *fields, "State=UNKNOWN"])


def slurm_conf(state: Path) -> str:
    return "\n".join([
        "ClusterName=adagen-test",
        "SlurmctldHost=localhost",
        "SlurmUser=root",
        "AuthType=auth/munge",
        # A requeued job waits out the step credential lifetime (120 s by default) before it starts again.
        "AuthInfo=cred_expire=10",
        f"StateSaveLocation={state / 'ctld'}",
        f"SlurmdSpoolDir={state / 'slurmd'}",
        f"SlurmctldPidFile={state / 'slurmctld.pid'}",
        f"SlurmdPidFile={state / 'slurmd.pid'}",
        f"SlurmctldLogFile={state / 'slurmctld.log'}",
        f"SlurmdLogFile={state / 'slurmd.log'}",
        # No accounting database: sacct fails, so status queries go to squeue.
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        # Finished jobs stay in squeue (no accounting database here) for the status checks of Snakemake's plugin
        # and for the tests, which read every job of a whole pipeline run back: longer than any run takes.
        "MinJobAge=7200",
        # No cgroups in a container: processes tracked by parent id, tasks not bound.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        # Cores and memory are both consumable, so two 1-CPU jobs share the 2-CPU node.
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_interval=1",
        "ReturnToService=2",
        "SlurmdTimeout=60",
        node_line(),
        f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _munge_answers() -> bool:
    munge = subprocess.run(["munge", "-n"], capture_output=True)
    return munge.returncode == 0 and subprocess.run(["unmunge"], input=munge.stdout, capture_output=True).returncode == 0


class LocalSlurm:
    """The cluster, from __enter__ to __exit__; `partition` is the one to submit to."""

    partition = PARTITION

    def __init__(self, folder: Path, start_timeout: float = 60.0):
        self.folder = Path(folder)
        self.start_timeout = start_timeout
        self.daemons: list[subprocess.Popen] = []
        self._lock = None
        self._backup: Path | None = None
        self._created_key = False

    def __enter__(self) -> "LocalSlurm":
        self._lock = open(CONF.parent / ".adagen-test-cluster.lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        state = self.folder / "state"
        for folder in (state / "ctld", state / "slurmd"):
            folder.mkdir(parents=True, exist_ok=True)
        if CONF.exists():
            self._backup = self.folder / "slurm.conf.orig"
            shutil.copy2(CONF, self._backup)
        CONF.write_text(slurm_conf(state))
        if not MUNGE_KEY.exists():
            MUNGE_KEY.write_bytes(os.urandom(1024))
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o400)
            self._created_key = True
        if not _munge_answers():
            MUNGE_RUN.mkdir(exist_ok=True)
            shutil.chown(MUNGE_RUN, "munge", "munge")
            self._spawn(["munged", "--foreground"], user="munge")
            self._wait(_munge_answers, "munged")
        self._spawn(["slurmctld", "-D"])
        self._spawn(["slurmd", "-D", "-N", "localhost"])
        self._wait(self._node_idle, "the node to be idle in sinfo")

    def _spawn(self, command: list[str], user: str | None = None) -> None:
        log = open(self.folder / f"{command[0]}.out", "w")
        self.daemons.append(subprocess.Popen([which(command[0]), *command[1:]], stdout=log,
                                             stderr=subprocess.STDOUT, user=user, start_new_session=True))
        log.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            dead = [daemon.args[0] for daemon in self.daemons if daemon.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
                                 for path in sorted(self.folder.rglob("*.out")) + sorted(self.folder.rglob("*.log")))
                raise RuntimeError(f"local SLURM: gave up waiting for {what} (exited: {dead})\n{logs}")
            time.sleep(0.2)

    @staticmethod
    def _node_idle() -> bool:
        sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
        return sinfo.returncode == 0 and sinfo.stdout.split() == ["idle"]

    def job_ids(self) -> set[str]:
        """Every job the controller has seen in the last two hours (MinJobAge), finished ones too."""
        squeue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
        return set(squeue.stdout.split())

    def __exit__(self, *exc_info) -> None:
        try:
            if any(daemon.args[0].endswith("slurmctld") and daemon.poll() is None for daemon in self.daemons):
                subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], capture_output=True, timeout=30)
            # Reverse order: slurmd before slurmctld before munged, which both need.
            for daemon in reversed(self.daemons):
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
                    try:
                        daemon.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        daemon.kill()
                        daemon.wait()
            self.daemons.clear()
        finally:
            if self._backup is not None:
                shutil.copy2(self._backup, CONF)
            else:
                CONF.unlink(missing_ok=True)
            if self._created_key:
                MUNGE_KEY.unlink(missing_ok=True)
            if self._lock is not None:
                self._lock.close()
                self._lock = None
