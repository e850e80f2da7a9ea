"""Run a study's plan in parallel: several local processes (one per GPU, or N CPU processes)
or SLURM jobs through ``submitit`` (issue 15).

The launcher never moves a model or a teacher between processes. It writes the arguments the
plan was made from (``plan.request``) to ``<study folder>/_launch/request.json``; each run is a
child process ``python -m softlabels.launch --request FILE --run-id ID`` that loads and plans the
same study again and executes that one run through :func:`softlabels.study.execute_run` (the
one run manager). A run whose column asks for several GPUs (``resources: {gpus: N}``) is started
under ``torchrun --standalone --nproc_per_node N`` (DDP; on CPU N gloo processes).

The parent only schedules: a run starts when every run it depends on (its teachers, earlier
ensemble members) has finished; a run whose dependency failed is ``skipped``. Each child writes
its output to ``_launch/logs/<run id>.log``; its last ``softlabels: error:`` line is the error
reported in ``status.json``. Each run id is started at most once per launcher, and a launcher
holds ``_launch/lock`` (an OS file lock, with its PID, host and start time written in it) for the
whole study, so two launchers never run the same study folder at once.

On SLURM (``--launcher slurm``; ``submitit-local`` is submitit's local executor, the same path
on this machine) each run is one job with its column's resources; the parent waits for the jobs
(run it in ``tmux``/``screen`` on the login node). Running the same command again reuses every
finished run, re-attaches to jobs of the previous launcher that are still pending or running
(``_launch/jobs.json``) and submits only what is missing.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, SoftlabelsError

LAUNCHERS = ("local", "slurm", "submitit-local")
#: ``resources:`` keys of a study column
RESOURCE_KEYS = ("gpus", "time", "mem", "cpus")
DEFAULT_TIME = "24:00:00"
TIME_RE = re.compile(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?")
MEM_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([MGT])B?", re.IGNORECASE)
ERROR_PREFIX = "softlabels: error: "


# ====================================================================== resources


def parse_time(value, where: str = "--time") -> int:
    """Minutes of ``"HH:MM:SS"``, ``"D-HH:MM[:SS]"``, ``"MM:SS"``-free forms or an int of minutes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = TIME_RE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{where}: expected minutes or HH:MM:SS (D-HH:MM:SS), got {value!r}")
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes < 1:
        raise ConfigError(f"{where}: expected at least one minute, got {value!r}")
    return minutes


def parse_mem(value, where: str = "--mem") -> float:
    """GB of ``"16G"``, ``"500M"``, ``"1T"`` or a number of GB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = MEM_RE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{where}: expected a size such as 16G or 500M, got {value!r}")
    return float(m.group(1)) * {"M": 1 / 1024, "G": 1.0, "T": 1024.0}[m.group(2).upper()]


def check_resources(value, where: str) -> dict:
    """A column's ``resources: {gpus: N, time: HH:MM:SS, mem: 32G, cpus: N}``, checked."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(RESOURCE_KEYS)}, got {value!r}")
    bad = sorted(str(k) for k in set(value) - set(RESOURCE_KEYS))
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: unknown key (accepted: {', '.join(RESOURCE_KEYS)})")
    for k in ("gpus", "cpus"):
        v = value.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{where}.{k}: expected an integer >= 1, got {v!r}")
    if value.get("time") is not None:
        parse_time(value["time"], f"{where}.time")
    if value.get("mem") is not None:
        parse_mem(value["mem"], f"{where}.mem")
    return dict(value)


@dataclass
class LaunchOptions:
    """How to execute a plan: ``jobs`` runs at once (None: one per device), on ``devices``
    (GPU indices; None: every visible GPU, or CPU processes when there is none), with
    ``launcher`` local | slurm | submitit-local and the SLURM job's defaults (a column's
    ``resources`` win)."""

    jobs: Optional[int] = None
    devices: Optional[List[int]] = None
    launcher: str = "local"
    partition: Optional[str] = None
    account: Optional[str] = None
    time: Optional[str] = None
    gpus_per_run: int = 1
    mem: Optional[str] = None
    cpus_per_run: Optional[int] = None
    poll: float = 0.2

    @property
    def parallel(self) -> bool:
        """False: the plan runs in this process, one run after the other (``run_plan``)."""
        return self.launcher != "local" or (self.jobs or 1) > 1 or self.devices is not None


def options_from_args(args) -> LaunchOptions:
    """LaunchOptions from ``softlabels study``'s flags (one-line ConfigError on a bad value)."""
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: expected >= 1, got {args.jobs}")
    devices = None
    if args.devices:
        try:
            devices = [int(x) for x in args.devices.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--devices: expected GPU indices such as 0,1,2,3, got {args.devices!r}") from None
        if not devices or len(set(devices)) != len(devices) or min(devices) < 0:
            raise ConfigError(f"--devices: expected distinct GPU indices such as 0,1,2,3, got {args.devices!r}")
    if args.gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run: expected >= 1, got {args.gpus_per_run}")
    if args.cpus_per_run is not None and args.cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run: expected >= 1, got {args.cpus_per_run}")
    if args.time is not None:
        parse_time(args.time)
    if args.mem is not None:
        parse_mem(args.mem)
    return LaunchOptions(args.jobs, devices, args.launcher, args.partition, args.account, args.time,
                         args.gpus_per_run, args.mem, args.cpus_per_run)


def run_resources(plan, spec, opts: LaunchOptions) -> dict:
    """The resources of one run: its column's ``resources`` over the launcher's defaults.
    An ensemble evaluation always takes one device."""
    col = getattr(plan.study.columns.get(spec.column), "resources", None) or {}
    gpus = 1 if spec.kind != "train" else int(col.get("gpus") or opts.gpus_per_run)
    return {"gpus": gpus, "time_min": parse_time(col.get("time") or opts.time or DEFAULT_TIME),
            "mem_gb": parse_mem(col.get("mem") or opts.mem) if (col.get("mem") or opts.mem) else None,
            "cpus": col.get("cpus") or opts.cpus_per_run}


def child_command(request: Path, run_id: str, procs: int = 1, threads: Optional[int] = None,
                  device: Optional[str] = None) -> List[str]:
    """The command of one run's process: ``python -m softlabels.launch …``, under ``torchrun``
    (``python -m torch.distributed.run --standalone --nproc_per_node N``) when ``procs`` > 1."""
    tail = ["-m", "softlabels.launch", "--request", str(request), "--run-id", run_id]
    if threads:
        tail += ["--threads", str(threads)]
    if device:
        tail += ["--device", device]
    if procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] + tail
    return [sys.executable] + tail


def log_path(plan, run_id: str) -> Path:
    return plan.out / "_launch" / "logs" / (run_id.replace("/", "__") + ".log")


def last_error(log: Path) -> str:
    """The error a child reported: its last ``softlabels: error:`` line (else its last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log ({log})"
    errs = [ln[len(ERROR_PREFIX):] for ln in lines if ln.startswith(ERROR_PREFIX)]
    if errs:
        return errs[-1]
    return lines[-1][:300] if lines else "the process ended without output"


# ====================================================================== the study lock


class StudyLock:
    """``<study folder>/_launch/lock``: an exclusive OS lock held by one launcher for its
    whole run (released by the OS if the launcher dies), with PID, host and start time in it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "_launch" / "lock"
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held = os.read(fd, 4096).decode(errors="replace").strip() or "another launcher"
            os.close(fd)
            raise SoftlabelsError(f"{self.path.parent.parent}: a launcher is already running this study "
                                  f"({held}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ====================================================================== backends


@dataclass
class Handle:
    spec: object
    t0: float
    proc: object = None                  # Popen (local) or submitit Job
    log: Optional[Path] = None
    slots: List = field(default_factory=list)
    job_id: Optional[str] = None


class LocalBackend:
    """Child processes on this machine: one per GPU of the pool (``procs`` GPUs for a DDP run),
    or ``jobs`` CPU slots with the cores divided between them."""

    def __init__(self, plan, opts: LaunchOptions, device: Optional[str], request: Path):
        import torch

        self.plan, self.opts, self.request = plan, opts, request
        want_gpu = (device or "auto") in ("auto", "cuda") or str(device).startswith("cuda")
        if opts.devices is not None:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if max(opts.devices) >= count:
                raise ConfigError(f"--devices: GPU {max(opts.devices)} is not visible ({count} GPU(s) here)")
            self.gpus = list(opts.devices)
        elif want_gpu and torch.cuda.is_available():
            self.gpus = list(range(torch.cuda.device_count()))
        else:
            self.gpus = []
        if self.gpus:
            self.free = list(self.gpus)
            self.capacity = len(self.gpus)
            self.limit = opts.jobs or len(self.gpus)
            self.threads = None
        else:
            jobs = opts.jobs or 1
            self.free = list(range(jobs))
            self.capacity = self.limit = jobs
            self.threads = opts.cpus_per_run or max(1, (os.cpu_count() or 1) // jobs)
        self.device = device
        self.running = 0

    def describe(self) -> str:
        if self.gpus:
            return f"{self.limit} run(s) at once on GPU(s) {','.join(map(str, self.gpus))}"
        return f"{self.limit} CPU process(es) at once, {self.threads} thread(s) each"

    def slots_of(self, spec) -> int:
        return run_resources(self.plan, spec, self.opts)["gpus"]

    def check(self, specs) -> None:
        for spec in specs:
            n = self.slots_of(spec)
            if n > self.capacity:
                unit = "GPU(s)" if self.gpus else "CPU slot(s) (--jobs)"
                raise ConfigError(f"{spec.id}: its column asks for {n} GPUs; this launcher has {self.capacity} "
                                  f"{unit}")

    def can_start(self, spec) -> bool:
        return self.running < self.limit and len(self.free) >= self.slots_of(spec)

    def start(self, spec) -> Handle:
        n = self.slots_of(spec)
        slots, self.free = self.free[:n], self.free[n:]
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots))
            device = "cuda"
        else:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
            device = self.device
        log = log_path(self.plan, spec.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = child_command(self.request, spec.id, n, None if self.gpus else self.threads, device)
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running += 1
        return Handle(spec, time.time(), proc, log, slots)

    def poll(self, h: Handle) -> Optional[Tuple[bool, str]]:
        rc = h.proc.poll()
        if rc is None:
            return None
        self.free += h.slots
        self.running -= 1
        return (True, "") if rc == 0 else (False, last_error(h.log) + ("" if rc > 0 else f" (killed by signal {-rc})"))

    def cancel(self, h: Handle) -> None:
        if h.proc.poll() is None:
            try:
                os.killpg(h.proc.pid, 15)
            except ProcessLookupError:
                pass
            h.proc.wait()


def run_child_job(cmd: List[str], env: Dict[str, str], log: str) -> str:
    """The function a submitit job runs: one run's command (a single process runs in the job's
    own process, its output sent to the run's log; torchrun as a subprocess); raises with the
    child's error."""
    os.environ.update(env)
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        if cmd[1:3] == ["-m", "softlabels.launch"]:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                rc = child_main(cmd[3:])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        else:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SoftlabelsError(last_error(Path(log)))
    return "ok"


ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


class SubmititBackend:
    """One SLURM job per run through submitit (``cluster="local"``: submitit's local executor)."""

    def __init__(self, plan, opts: LaunchOptions, device: Optional[str], request: Path):
        try:
            import submitit
        except ImportError:
            raise SoftlabelsError(f"--launcher {opts.launcher} needs submitit: pip install 'softlabels[slurm]' "
                                  "(or pip install submitit)") from None
        self.submitit = submitit
        self.plan, self.opts, self.request, self.device = plan, opts, request, device
        self.cluster = "slurm" if opts.launcher == "slurm" else "local"
        self.folder = plan.out / "_launch" / "submitit"
        self.executor()  # fails here, before anything runs, where submitit cannot submit
        self.jobs_file = plan.out / "_launch" / "jobs.json"
        self.limit = opts.jobs or 10 ** 9
        self.running = 0

    def executor(self):
        """A fresh executor per job, so that one column's resources never carry over to the next."""
        try:
            return self.submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        except Exception as exc:  # e.g. no sbatch on this machine
            raise SoftlabelsError(f"--launcher {self.opts.launcher}: submitit cannot submit here "
                                  f"({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None

    def describe(self) -> str:
        cap = "no limit" if self.opts.jobs is None else f"at most {self.opts.jobs} at once"
        return f"submitit {self.cluster} executor, one job per run ({cap}), jobs in {self.folder}"

    def check(self, specs) -> None:
        """Nothing to check here: a job's GPUs, memory and time are SLURM's to grant or refuse
        (LocalBackend.check refuses a run needing more GPUs than the machine has)."""

    def _record(self, run_id: str, job_id: Optional[str]) -> None:
        from .engine.checkpoint import atomic_write_text

        jobs = _read(self.jobs_file)
        if job_id is None:
            jobs.pop(run_id, None)
        else:
            jobs[run_id] = job_id
        atomic_write_text(self.jobs_file, json.dumps(jobs, indent=1))

    def reattach(self, spec) -> Optional[Handle]:
        """A job of an earlier launcher for this run that SLURM still holds, if any."""
        job_id = _read(self.jobs_file).get(spec.id)
        if job_id is None:
            return None
        if self.cluster != "slurm":  # submitit's local executor: the job id is the process id
            try:
                os.kill(int(str(job_id).split("_")[0]), 0)
            except (OSError, ValueError):
                return None
            raise SoftlabelsError(f"{spec.id}: process {job_id} of an earlier launcher may still be running it; "
                                  f"wait for it or stop it, then run again")
        job = self.submitit.SlurmJob(folder=str(self.folder), job_id=str(job_id))
        try:
            state = job.state
        except Exception:
            return None
        if state.split()[0] not in ACTIVE_STATES:
            return None
        self.running += 1
        return Handle(spec, time.time(), job, log_path(self.plan, spec.id), job_id=str(job_id))

    def can_start(self, spec) -> bool:
        return self.running < self.limit

    def start(self, spec) -> Handle:
        import torch

        res = run_resources(self.plan, spec, self.opts)
        gpu = self.cluster == "slurm" or torch.cuda.is_available()
        cpus = res["cpus"] or (None if gpu else 1)
        params = {"name": f"sl-{self.plan.study.name}-{spec.id}"[:120], "timeout_min": res["time_min"],
                  "nodes": 1, "tasks_per_node": 1, "gpus_per_node": res["gpus"] if gpu else 0,
                  "stderr_to_stdout": True}
        if cpus:
            params["cpus_per_task"] = cpus
        if res["mem_gb"]:
            params["mem_gb"] = res["mem_gb"]
        if self.opts.partition:
            params["slurm_partition"] = self.opts.partition
        if self.opts.account:
            params["slurm_account"] = self.opts.account
        executor = self.executor()
        executor.update_parameters(**params)
        env = {} if gpu else {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus)}
        log = log_path(self.plan, spec.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = child_command(self.request, spec.id, res["gpus"], None if gpu else cpus,
                            "cuda" if gpu else self.device)
        try:
            job = executor.submit(run_child_job, cmd, env, str(log))
        except Exception as exc:  # sbatch missing or refusing (partition, account, limits)
            text = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise SoftlabelsError(f"{spec.id}: submitting the job failed: "
                                  f"{(text[-1] if text else type(exc).__name__)[:300]}") from None
        self._record(spec.id, str(job.job_id))
        self.running += 1
        return Handle(spec, time.time(), job, log, job_id=str(job.job_id))

    def poll(self, h: Handle) -> Optional[Tuple[bool, str]]:
        if not h.proc.done():
            return None
        self.running -= 1
        self._record(h.spec.id, None)
        try:
            exc = h.proc.exception()
        except Exception as e:  # the job died without a result (time limit, node failure, cancelled)
            return False, f"job {h.job_id}: {(str(e).splitlines() or [type(e).__name__])[0][:300]}"
        if exc is None:
            return True, ""
        if h.log is not None and ERROR_PREFIX in _text(h.log):
            return False, last_error(h.log)
        text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return False, f"job {h.job_id}: " + (text[0] if text else type(exc).__name__)[:300]

    def cancel(self, h: Handle) -> None:
        try:
            h.proc.cancel(check=False)
        except Exception:
            pass


def _text(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _read(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


# ====================================================================== the scheduler loop


def launch_plan(plan, opts: LaunchOptions, *, device: Optional[str] = None, stream=None) -> Dict[str, dict]:
    """Execute ``plan`` with ``opts`` (see the module's docstring); returns the same status
    mapping as ``study.run_plan`` (plus ``log`` and ``job`` per run) and writes status.json."""
    from .engine.checkpoint import atomic_write_text
    from .study import is_reusable

    stream = stream or sys.stderr
    if opts.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher: expected one of {', '.join(LAUNCHERS)}, got {opts.launcher!r}")
    plan.out.mkdir(parents=True, exist_ok=True)
    with StudyLock(plan.out):
        if plan.study.path.resolve() != (plan.out / "study.yaml").resolve():
            (plan.out / "study.yaml").write_text(plan.study.path.read_text())
        request = plan.out / "_launch" / "request.json"
        # relative paths in the overrides and --data-root are read from the launcher's folder
        atomic_write_text(request, json.dumps(dict(plan.request, cwd=os.getcwd()), indent=1))
        backend = (LocalBackend if opts.launcher == "local" else SubmititBackend)(plan, opts, device, request)
        backend.check(plan.runs)
        print(f"study {plan.study.name}: {len(plan.runs)} runs, {backend.describe()}", file=stream)
        status: Dict[str, dict] = {}
        total = len(plan.runs)
        pending = []
        for spec in plan.runs:
            if is_reusable(spec):
                status[spec.id] = {"status": "reused", "seconds": 0.0}
            else:
                pending.append(spec)
        print(f"{total - len(pending)} already finished, {len(pending)} to run", file=stream)
        running: Dict[str, Handle] = {}

        def report(spec, text):
            left = total - len(status)
            print(f"[{len(status)}/{total}] {spec.what}: {text} ({left} left)", file=stream, flush=True)

        if isinstance(backend, SubmititBackend):
            for spec in list(pending):
                h = backend.reattach(spec)
                if h is not None:
                    running[spec.id] = h
                    pending.remove(spec)
                    print(f"{spec.what}: job {h.job_id} of an earlier launcher is still queued or running; "
                          f"waiting for it", file=stream)
        try:
            while pending or running:
                for rid, h in list(running.items()):
                    got = backend.poll(h)
                    if got is None:
                        continue
                    del running[rid]
                    ok, err = got
                    secs = round(time.time() - h.t0, 2)
                    entry = {"seconds": secs, "log": str(h.log)}
                    if h.job_id:
                        entry["job"] = h.job_id
                    if ok:
                        status[rid] = dict(entry, status="done")
                        report(h.spec, f"finished in {secs:.1f} s")
                    else:
                        status[rid] = dict(entry, status="failed", error=err)
                        report(h.spec, f"FAILED: {err} (log: {h.log})")
                for spec in list(pending):
                    bad = [d for d in spec.deps if status.get(d, {}).get("status") in ("failed", "skipped")]
                    if bad:
                        pending.remove(spec)
                        status[spec.id] = {"status": "skipped", "error": f"needs {bad[0]}, which did not finish"}
                        report(spec, f"skipped (needs {bad[0]})")
                        continue
                    ready = all(status.get(d, {}).get("status") in ("done", "reused") for d in spec.deps)
                    if ready and spec.id not in running and backend.can_start(spec):
                        pending.remove(spec)
                        running[spec.id] = backend.start(spec)   # each run id at most once
                if pending or running:
                    time.sleep(opts.poll)
        except BaseException:
            for h in running.values():
                backend.cancel(h)
            raise
        atomic_write_text(plan.out / "status.json", json.dumps(status, indent=1))
    return status


# ====================================================================== the dry run's figures


def estimate_wall(plan, seconds: Dict[str, float], jobs: int, opts: Optional[LaunchOptions] = None) -> Tuple[float, float]:
    """(wall seconds with ``jobs`` devices, device-seconds) of the runs still to do: list
    scheduling of the plan in its order, each run taking its column's GPUs and
    ``seconds / gpus`` (DDP assumed to scale linearly); finished runs take no time."""
    opts = opts or LaunchOptions()
    need = {s.id: run_resources(plan, s, opts)["gpus"] for s in plan.runs}
    dur = {s.id: (seconds.get(s.id, 0.0) if seconds.get(s.id, 0.0) == seconds.get(s.id, 0.0) else 0.0)
           for s in plan.runs}
    dev_s = sum(dur[i] for i in dur)
    dur = {i: d / need[i] for i, d in dur.items()}
    free, now, pending = jobs, 0.0, list(plan.runs)
    ends: Dict[str, float] = {}
    running: List[Tuple[float, str]] = []
    while pending or running:
        for spec in list(pending):
            n = min(need[spec.id], jobs)
            if all(d in ends and ends[d] <= now for d in spec.deps) and n <= free:
                pending.remove(spec)
                free -= n
                ends[spec.id] = now + dur[spec.id]
                running.append((ends[spec.id], spec.id))
        if not running:
            break
        running.sort()
        now = running[0][0]
        while running and running[0][0] <= now:
            _, rid = running.pop(0)
            free += min(need[rid], jobs)
    return max(ends.values(), default=0.0), dev_s


def dry_run_lines(plan, seconds: Dict[str, float], jobs: Optional[int], opts: Optional[LaunchOptions] = None) -> List[str]:
    """The dry run's device-hours and wall times at 1 and ``jobs`` devices."""
    from .study import _hms

    runs = plan.by_id()
    todo = {k: v for k, v in seconds.items() if not (runs[k].run_dir / "final.json").is_file()}
    if any(v != v for v in todo.values()):
        return ["device-hours: ? (some runs have no throughput)"]
    wall1, dev_s = estimate_wall(plan, todo, 1, opts)
    out = [f"device-hours of the runs to do: {dev_s / 3600:.2f} (GPU-hours when the throughput is a GPU's)"]
    for n in sorted({1, 8} | ({jobs} if jobs else set())):
        wall, _ = estimate_wall(plan, todo, n, opts)
        out.append(f"  wall time at --jobs {n}: {_hms(wall)}")
    return out


# ====================================================================== the child


def child_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m softlabels.launch --request FILE --run-id ID``: plan the study again from the
    launcher's request and execute that one run (dependencies must have finished)."""
    ap = argparse.ArgumentParser(prog="python -m softlabels.launch",
                                 description="execute one run of a study (started by the study launcher)")
    ap.add_argument("--request", required=True)
    ap.add_argument("--run-id", dest="run", required=True)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device")
    args = ap.parse_args(argv)
    try:
        from .engine.runtime import setup_runtime, teardown_runtime
        from .study import execute_run, is_done, load_study, plan_study

        req = _read(Path(args.request))
        if not req.get("study"):
            raise SoftlabelsError(f"{args.request}: not a launcher request file")
        if req.get("cwd") and os.path.isdir(req["cwd"]):
            os.chdir(req["cwd"])
        plan = plan_study(load_study(req["study"]), req["out"], data_root=req.get("data_root"),
                          seeds=req.get("seeds"), rows=req.get("rows"), columns=req.get("columns"),
                          smoke=bool(req.get("smoke")), overrides=req.get("overrides") or ())
        runs = plan.by_id()
        spec = runs.get(args.run)
        if spec is None:
            raise SoftlabelsError(f"run {args.run} is not in the study's plan")
        waiting = [d for d in spec.deps if not is_done(runs[d])]
        if waiting:
            raise SoftlabelsError(f"run {args.run} needs {waiting[0]}, which has not finished")
        if args.threads and spec.cfg is not None:
            spec.cfg.train.threads = args.threads
        rt = setup_runtime(args.device or (spec.cfg.train.device if spec.cfg else "auto"))
        try:
            state, _ = execute_run(spec, plan, rt)
        finally:
            teardown_runtime(rt)
        if rt.is_main:
            print(f"softlabels launch: {args.run}: {state}")
        return 0
    except KeyboardInterrupt:
        print(f"{ERROR_PREFIX}interrupted", file=sys.stderr)
        return 130
    except SoftlabelsError as exc:
        print(f"{ERROR_PREFIX}{(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return exc.exit_code or 1
    except Exception as exc:  # noqa: BLE001  the traceback goes to the run's log, the last line is the error
        import traceback

        traceback.print_exc()
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(child_main())
