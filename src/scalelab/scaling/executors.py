"""Where a study's runs execute: a local process pool, a launcher per run, or SLURM jobs.

`run_jobs(jobs, cfg, on_done, threads=..., say=...)` trains every job and calls
`on_done(job, error_or_None)` as each one finishes; a job is the study's
(model dict, seed, run_dir, config_path) tuple. Which executor runs them:

    executor: local, no launcher   a spawn ProcessPoolExecutor, `parallel_runs` at a time;
                                   each worker also warms the run's task-eval cache
    executor: local + launcher     one run after another through the launcher (e.g. torchrun)
    executor: slurm                one submitit job per run (an array when several are
                                   submitted together), training in-process or through the
                                   launcher inside the allocation (docs/CLUSTER.md)

SLURM submissions are recorded in <out_dir>/slurm/jobs.json, so re-running the study
after the submitting process died re-attaches to jobs still queued or running and
resubmits only runs whose job failed or vanished.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from scalelab.errors import ConfigError, ScalelabError, TrainingError
from scalelab.io import atomic_write_json

if TYPE_CHECKING:
    from scalelab.scaling.study_config import StudyConfig

Job = tuple  # (model dict, seed, run_dir: Path, config_path: Path)
OnDone = Callable[[Job, "BaseException | None"], None]

JOBS_FORMAT_VERSION = 1
# sacct states of a job that may still produce a result (submitit's list plus the rarer ones)
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED",
           "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def run_jobs(jobs: list[Job], cfg: StudyConfig, on_done: OnDone, *, threads: int | None = None,
             say: Callable[..., None] = print) -> None:
    """Train `jobs` with the executor the study config names; `on_done` reports each one."""
    if not jobs:
        return
    if cfg.executor == "slurm":
        SlurmRunner(cfg, threads=threads, say=say).run(jobs, on_done)
    elif cfg.launcher:
        for job in jobs:
            try:
                _train_subprocess(cfg.launcher, job[3], job[2], threads)
                on_done(job, None)
            except TrainingError as e:
                on_done(job, e)
    else:
        _run_pool(jobs, cfg, on_done, threads)


# -- the training entry points (run in a pool worker, a subprocess or a SLURM job) ------

def _train_in_worker(config_path: str, run_dir: str, threads: int | None, eval_cfg: StudyConfig | None = None) -> None:
    """Train one run inside a long-lived process (torch is imported once per worker,
    not once per run), with its output going to the run's train.log."""
    os.environ["SCALELAB_NO_PROGRESS"] = "1"
    if threads:
        import torch

        torch.set_num_threads(threads)
    from scalelab.config import load_config
    from scalelab.eval.train_hooks import training_hooks
    from scalelab.train.trainer import train

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "train.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            train(load_config(config_path), hooks=training_hooks())
            if eval_cfg is not None and eval_cfg.eval.tasks:  # warm the eval cache while the executor is busy
                from scalelab.scaling.study_eval import evaluate_tasks

                evaluate_tasks({"run_dir": run_dir}, eval_cfg)
        except ScalelabError as e:
            print(f"error: {e}", flush=True)
            raise TrainingError(f"run {Path(run_dir).name} failed: {e}") from None


def _train_subprocess(launcher: str, config_path: Path, run_dir: Path, threads: int | None) -> None:
    """Multi-GPU runs go through the configured launcher (e.g. torchrun) in a subprocess."""
    cmd = shlex.split(launcher) + ["-m", "scalelab", "train", str(config_path)]
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        except FileNotFoundError:
            raise ConfigError(f"launcher '{launcher}': '{cmd[0]}' is not on PATH; install it or fix the "
                              "study's launcher key") from None
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text().strip().splitlines()[-3:]
        raise TrainingError(f"run {run_dir.name} failed (exit {proc.returncode}); see {run_dir / 'train.log'}: "
                            + " | ".join(tail))


def _run_pool(jobs: list[Job], cfg: StudyConfig, on_done: OnDone, threads: int | None) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: forking a process that already runs torch threads is unsafe.
    with ProcessPoolExecutor(max_workers=min(cfg.parallel_runs, len(jobs)),
                             mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, str(job[3]), str(job[2]), threads, cfg): job for job in jobs}
        for fut in as_completed(futures):
            try:
                fut.result()
                on_done(futures[fut], None)
            except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
                on_done(futures[fut], e)


def _master_port(job_id: str) -> int:
    # Derived from the job id (as submitit does): array jobs sharing a node do not collide.
    return random.Random(job_id).randint(20000, 60000)


class SlurmTrain(submitit.helpers.Checkpointable):
    """The function a SLURM job runs: one task per process (in-process training) or one
    per node (through the launcher). Checkpointable: on timeout or preemption submitit
    requeues the same job id, and training resumes from the run's last checkpoint."""

    def __call__(self, config_path: str, run_dir: str, threads: int | None, launcher: str,
                 eval_cfg: StudyConfig | None) -> str:
        env = submitit.JobEnvironment()
        rank0 = env.global_rank == 0
        os.environ["SCALELAB_NO_PROGRESS"] = "1"
        if launcher:
            # What a multi-node launcher line needs for its rendezvous (docs/CLUSTER.md).
            os.environ.update(MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(_master_port(str(env.job_id))),
                              SCALELAB_NNODES=str(env.num_nodes), SCALELAB_NODE_RANK=str(env.node),
                              SCALELAB_JOB_ID=str(env.job_id))
            _train_subprocess(os.path.expandvars(launcher), Path(config_path), Path(run_dir), threads)
            if rank0 and eval_cfg is not None and eval_cfg.eval.tasks:
                _warm_eval(run_dir, eval_cfg)
        else:
            if env.num_tasks > 1:  # one task per GPU: the trainer reads RANK / WORLD_SIZE / LOCAL_RANK
                os.environ["MASTER_PORT"] = str(_master_port(str(env.job_id)))  # not the submitter's, if it had one
                submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                      overwrite=True)
            _train_in_worker(config_path, run_dir, threads, eval_cfg if rank0 else None)
        return run_dir


def _warm_eval(run_dir: str, eval_cfg: StudyConfig) -> None:
    from scalelab.scaling.study_eval import evaluate_tasks

    with open(Path(run_dir) / "train.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            evaluate_tasks({"run_dir": run_dir}, eval_cfg)
        except ScalelabError as e:
            print(f"error: {e}", flush=True)
            raise TrainingError(f"run {Path(run_dir).name}: task evaluation failed: {e}") from None


# -- SLURM (and submitit's local cluster, to try a setup on one machine) ------------------

class SlurmRunner:
    """Submits runs as submitit jobs, records them, re-attaches, polls and reports."""

    def __init__(self, cfg: StudyConfig, *, threads: int | None = None, say: Callable[..., None] = print):
        self.cfg = cfg
        self.sc = cfg.slurm
        self.threads = threads
        self.say = say
        self.root = Path(cfg.out_dir) / "slurm"
        self.folder = (self.root / "logs").absolute()
        self.jobs_path = self.root / "jobs.json"
        self._executor: Any = None

    # - records -
    def load_records(self) -> dict[str, dict[str, Any]]:
        if not self.jobs_path.is_file():
            return {}
        try:
            tree = json.loads(self.jobs_path.read_text())
        except ValueError:
            self.say(f"warning: {self.jobs_path} is unreadable; its runs are submitted again", flush=True)
            return {}
        if tree.get("cluster") != self.sc.cluster:
            return {}  # ids of another cluster kind mean nothing here
        return dict(tree.get("runs", {}))

    def _save_records(self, records: dict[str, dict[str, Any]]) -> None:
        atomic_write_json(self.jobs_path, {"format_version": JOBS_FORMAT_VERSION, "kind": "scalelab.slurm_jobs",
                                           "cluster": self.sc.cluster, "folder": str(self.folder), "runs": records})

    # - submitit objects -
    def executor(self) -> Any:
        if self._executor is None:
            sc = self.sc
            if sc.cluster == "slurm" and shutil.which("sbatch") is None:
                raise ConfigError("executor: slurm, but there is no 'sbatch' on PATH: run the study on a SLURM "
                                  "login node, or set slurm.cluster: local to try the setup on this machine")
            ex = submitit.AutoExecutor(folder=self.folder, cluster=sc.cluster)
            params: dict[str, Any] = dict(name=self.cfg.name, timeout_min=int(sc.time_min), nodes=sc.nodes,
                                          tasks_per_node=sc.tasks_per_node, cpus_per_task=sc.cpus_per_task)
            if sc.gpus_per_node:
                params["gpus_per_node"] = sc.gpus_per_node
            if sc.mem_gb:
                params["mem_gb"] = sc.mem_gb
            if sc.cluster == "slurm":
                params.update(slurm_array_parallelism=sc.array_parallelism,
                              slurm_partition=sc.partition or None, slurm_account=sc.account or None,
                              slurm_qos=sc.qos or None, slurm_additional_parameters=dict(sc.additional) or None,
                              slurm_setup=list(sc.setup) or None)
            elif sc.setup:
                params["local_setup"] = list(sc.setup)
            try:
                ex.update_parameters(**params)
            except (ValueError, NameError, AssertionError) as e:
                raise ConfigError(f"slurm section rejected by submitit: {e}") from None
            self._executor = ex
        return self._executor

    def _job_class(self) -> type:
        return submitit.SlurmJob if self.sc.cluster == "slurm" else submitit.LocalJob

    def _rebuild(self, rec: dict[str, Any]) -> Any:
        return self._job_class()(folder=self.folder, job_id=str(rec["job_id"]), tasks=list(range(rec.get("tasks", 1))))

    # - state -
    @staticmethod
    def _results_written(handle: Any) -> bool:
        return all(handle.task(k).paths.result_pickle.exists() for k in range(handle.num_tasks))

    def _state(self, handle: Any, grace_s: float = 300.0) -> str:
        """QUEUED, RUNNING or ENDED (finished, failed or vanished)."""
        if self._results_written(handle):
            return "ENDED"
        if self.sc.cluster == "local":
            return "RUNNING" if _local_alive(handle) else "ENDED"
        state = (handle.state or "UNKNOWN").split()[0].upper()  # "CANCELLED by 123" -> CANCELLED
        if state == "PENDING":
            return "QUEUED"
        if state in _ACTIVE:
            return "RUNNING"
        # UNKNOWN: sacct does not (or no longer) know it; a fresh submission gets a few minutes
        if state == "UNKNOWN" and time.time() - getattr(handle, "_start_time", 0) < grace_s:
            return "QUEUED"
        return "ENDED"

    def _outcome(self, run_name: str, handle: Any) -> TrainingError | None:
        failed = None
        for k in range(handle.num_tasks):
            task = handle.task(k)
            if not task.paths.result_pickle.exists():
                failed = (task, "ended without a result")
                break
            if task.exception() is not None:
                failed = (task, "raised an error")
                break
        if failed is None:
            return None
        task, how = failed
        state = "" if self.sc.cluster == "local" else f", state {task.state}"
        log = task.paths.stderr
        text = log.read_text(errors="replace") if log.is_file() else ""
        # The exception and any scheduler message (slurmstepd: ... TIME LIMIT), not the
        # traceback's indented frames or submitit's own log lines.
        tail = [re.sub(r"^scalelab\.errors\.\w+: ", "", line.strip()) for line in text.splitlines()
                if line.strip() and not line[0].isspace() and not line.startswith(("Traceback", "submitit "))][-3:]
        run_log = Path(self.cfg.out_dir) / "runs" / run_name / "train.log"
        return TrainingError(f"run {run_name} failed: job {task.job_id} (task {k}) {how}{state}; see {log} and "
                             f"{run_log}: " + (" | ".join(tail) if tail else "(its error log is empty)"))

    # - the loop -
    def attach(self, jobs: list[Job]) -> dict[str, Any]:
        """Handles of recorded jobs that are still queued or running, by run name."""
        records = self.load_records()
        handles = {}
        for job in jobs:
            name = job[2].name
            rec = records.get(name)
            if not rec or rec.get("config") != str(job[3]):
                continue
            handle = self._rebuild(rec)
            if self.sc.cluster == "slurm":
                handle.get_info(mode="force")  # a fresh sacct answer, not the watcher's cache
            if self._state(handle, grace_s=0) != "ENDED":  # a recorded id sacct forgot has vanished
                handles[name] = handle
        return handles

    def submit(self, jobs: list[Job]) -> dict[str, Any]:
        """Submit `jobs` together (one job array on SLURM) and record their ids."""
        ex = self.executor()
        fn = SlurmTrain()
        try:
            with ex.batch():
                pending = [ex.submit(fn, str(j[3]), str(j[2]), self.threads, self.cfg.launcher, self.cfg)
                           for j in jobs]
        except (FailedJobError, FailedSubmissionError, OSError) as e:
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            raise ConfigError(f"sbatch refused the study's jobs ({lines[-1] if lines else e}); check the slurm "
                              "section (partition, account, qos, time_min, gpus_per_node, additional)") from None
        records = self.load_records()
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        handles = {}
        for job, handle in zip(jobs, pending):
            handles[job[2].name] = handle
            records[job[2].name] = {"job_id": str(handle.job_id), "tasks": handle.num_tasks, "config": str(job[3]),
                                    "run_dir": str(job[2]), "submitted": now}
        # Written right after sbatch returns: a re-run must find these ids, not submit twice.
        self._save_records(records)
        return handles

    def run(self, jobs: list[Job], on_done: OnDone) -> None:
        by_name = {j[2].name: j for j in jobs}
        running = self.attach(jobs)
        if running:
            ids = ", ".join(f"{n} ({h.job_id})" for n, h in running.items())
            self.say(f"re-attached to {len(running)} job(s) still queued or running: {ids}", flush=True)
        waiting = [j for j in jobs if j[2].name not in running]
        # SLURM throttles an array itself (%array_parallelism); submitit's local cluster does not.
        cap = len(jobs) if self.sc.cluster == "slurm" else self.sc.array_parallelism
        try:
            self._loop(running, waiting, by_name, on_done, cap)
        except KeyboardInterrupt:
            if self.sc.cluster == "slurm":  # local jobs share our terminal's Ctrl-C; SLURM jobs do not
                self.say(f"the submitted jobs keep running: re-run the same command to re-attach, or scancel "
                         f"the ids in {self.jobs_path} to stop them", flush=True)
            raise

    def _loop(self, running: dict[str, Any], waiting: list[Job], by_name: dict[str, Job], on_done: OnDone,
              cap: int) -> None:
        counts = {"done": 0, "failed": 0}
        last_status = time.monotonic()
        tick = min(1.0, self.sc.poll_s)
        while running or waiting:
            if waiting and len(running) < cap:
                batch, waiting = waiting[:cap - len(running)], waiting[cap - len(running):]
                fresh = self.submit(batch)
                self.say(f"submitted {len(fresh)} job(s) to {self.sc.cluster}: "
                         + ", ".join(f"{n} ({h.job_id})" for n, h in fresh.items()), flush=True)
                running.update(fresh)
            states = {name: self._state(h) for name, h in running.items()}
            for name, state in states.items():
                if state == "ENDED":
                    err = self._outcome(name, running.pop(name))
                    counts["failed" if err else "done"] += 1
                    on_done(by_name[name], err)
            if time.monotonic() - last_status >= self.sc.poll_s and (running or waiting):
                last_status = time.monotonic()
                queued = sum(s == "QUEUED" for n, s in states.items() if n in running) + len(waiting)
                active = sum(s == "RUNNING" for n, s in states.items() if n in running)
                self.say(f"  slurm: {queued} queued, {active} running, {counts['done']} done, "
                         f"{counts['failed']} failed", flush=True)
                if self.sc.cluster == "slurm":
                    submitit.SlurmJob.watcher.update()  # one sacct call for every job, once per poll
            if running or waiting:
                time.sleep(tick)


def _local_alive(handle: Any) -> bool:
    """Is a submitit local job's controller (its job id is the pid) still running?"""
    process = getattr(handle, "_process", None)
    if process is not None:
        return process.poll() is None
    pid = int(str(handle.job_id).split("_")[0])
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that just ended: reap it
            return False
    except ChildProcessError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return b"submitit" in cmdline.read_bytes()  # a reused pid runs something else
        except OSError:
            return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
