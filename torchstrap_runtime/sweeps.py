"""Resume a sweep: resubmit only the runs that need it, with their own run ids (`scripts/submit.py --resume`).

    python scripts/submit.py --resume slurm_logs --dry-run    # the plan: one row per run, nothing submitted
    python scripts/submit.py --resume slurm_logs              # resubmit the failed, preempted and never-started runs
    python scripts/submit.py --resume slurm_logs --local      # resubmit through submitit's LocalExecutor

SWEEP_DIR is the folder submitit wrote the sweep's jobs into (slurm.folder without %j). Each job's submission
(submitit's pickle) names its run folder; a run with several jobs (already resumed once) is judged by its
latest. A run is left alone when it finished (or stopped early) or when its job is running or queued (sacct,
or for jobs sacct no longer lists, squeue; without SLURM, a live run lock). Every other run is resubmitted with
its recorded config: a run folder holding `checkpoints/last.pt` resumes exactly from it, a run that never
started starts. The new jobs write into SWEEP_DIR too, so a later `--resume` sees them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .command_line import split_options
from .errors import UserError, fail
from .runs import RunsError, format_rows, is_run_dir, load_run, run_status, sweep_jobs
from .runs.folders import slurm_job_rows

ALIVE_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
LEFT_STATUSES = ("finished", "stopped early", "running", "queued")   # everything else is resubmitted


@dataclass
class SweepRun:
    """One run of a sweep: its folder, its jobs (oldest first), the latest job's state, what `--resume` does."""
    run_dir: Path
    jobs: list[str]
    job_state: str | None          # the latest job's SLURM state (None: SLURM does not know it)
    status: str                    # finished, stopped early, running, queued, failed, preempted, never started
    function: Any = field(repr=False, default=None)    # the latest job's launcher.TrainJob
    new_job: str | None = None     # the job it was resubmitted as

    @property
    def resubmit(self) -> bool:
        return self.status not in LEFT_STATUSES


def _job_order(job_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", job_id))


def queued_states(job_ids: list[str]) -> dict[str, str]:
    """`{job id: state}` for the jobs `squeue` still holds (pending, running or recently ended); {} without it."""
    return dict(slurm_job_rows(["squeue", "-h", "-t", "all", "-o", "%i|%T"], job_ids))


def judge(run_dir: Path, job_state: str | None, slurm: bool) -> str:
    """A run's status for `--resume` from its folder (log end line, epochs, lock) and its latest job's state."""
    run = load_run(run_dir) if is_run_dir(run_dir) else None
    if run is not None and run.status in ("finished", "stopped early"):
        return run.status
    if job_state in ALIVE_STATES:
        return "running"
    if job_state in QUEUED_STATES:
        return "queued"
    if run is not None and run.status == "running" and (job_state is None or not slurm):
        return "running"   # a live lock (or a fresh log), and no SLURM state to say otherwise
    if run is None or not (run.epochs or run.end or run.has_checkpoint or run.log_mtime):
        return "never started"
    if job_state:   # SLURM says the job is over: a lock left behind (killed, maybe on another node) is stale
        return run_status(replace(run, lock=None), job_state)
    return "preempted" if run.status == "preempted" else "failed"


def sweep_plan(folder: str | Path, slurm: bool = True) -> list[SweepRun]:
    """Every run submitted into `folder`, with its status and whether `--resume` resubmits it (`slurm`: ask
    SLURM about the jobs; False for a sweep run with --local)."""
    jobs = sweep_jobs(folder) if slurm else [dict(job, slurm_state=None) for job in sweep_jobs(folder)]
    by_run: dict[Path, list[dict]] = {}
    for job in sorted(jobs, key=lambda job: _job_order(job["job"])):
        by_run.setdefault(Path(job["run_dir"]), []).append(job)
    unknown = [runs[-1]["job"] for runs in by_run.values() if runs[-1]["slurm_state"] is None]
    queued = queued_states(unknown) if slurm else {}
    plan = []
    for run_dir, runs in by_run.items():
        latest = runs[-1]
        state = latest["slurm_state"] or queued.get(latest["job"])
        plan.append(SweepRun(run_dir, [job["job"] for job in runs], state, judge(run_dir, state, slurm),
                             latest["function"]))
    return plan


def resume_sweep(folder: str | Path, submit: Callable[[list[Any], bool], list[tuple[Any, Path]]],
                 local: bool = False, dry_run: bool = False) -> list[SweepRun]:
    """Resubmit the runs of `sweep_plan` that need it through `submit(train jobs, local)` (the launcher's
    `resubmit`), their new jobs written into `folder`; with `dry_run` only the plan."""
    folder = Path(folder).absolute()
    plan = sweep_plan(folder, slurm=not local)
    todo = [run for run in plan if run.resubmit]
    if dry_run or not todo:
        return plan
    functions = []
    for run in todo:
        state = json.loads(json.dumps(run.function.__getstate__()))    # a fresh copy: same config and run id
        function = type(run.function)(**state)
        slurm = function.config["slurm"]
        slurm["folder"] = str(folder / "%j") if str(slurm["folder"]).endswith("%j") else str(folder)
        functions.append(function)
    new_jobs = {Path(run_dir): str(job.job_id) for job, run_dir in submit(functions, local)}
    for run in todo:
        run.new_job = new_jobs.get(run.run_dir)
    return plan


def plan_rows(plan: list[SweepRun], dry_run: bool) -> list[dict[str, Any]]:
    """The short table `--resume` prints: run, jobs, latest job state, status, action."""
    rows = []
    for run in plan:
        if not run.resubmit:
            action = "leave"
        elif dry_run:
            action = "resubmit"
        else:
            action = f"resubmitted as job {run.new_job}" if run.new_job else "not resubmitted"
        rows.append({"run": run.run_dir.name, "jobs": ",".join(run.jobs), "job_state": run.job_state or "-",
                     "status": run.status, "action": action})
    return rows


def resume_command(argv: list[str], submit: Callable[[list[Any], bool], list[tuple[Any, Path]]]
                   ) -> list[SweepRun]:
    """`submit.py --resume SWEEP_DIR [--dry-run] [--local]`: print the plan as a table, resubmit unless dry."""
    try:
        found, rest = split_options(argv, flags=["--dry-run", "--local"], options=["--resume"])
    except ValueError:
        fail(UserError("--resume needs the sweep's folder: --resume SWEEP_DIR (slurm.folder without %j)"), argv=argv)
    if rest or len(found["--resume"]) != 1:
        fail(UserError(f"--resume takes one SWEEP_DIR and only --dry-run and --local beside it, got "
                       f"{' '.join(argv)!r}"), argv=argv)
    folder, dry_run, local = found["--resume"][0], bool(found["--dry-run"]), bool(found["--local"])
    try:
        plan = resume_sweep(folder, submit, local=local, dry_run=dry_run)
    except (RunsError, UserError) as error:
        fail(error, argv=argv)
    if not plan:
        print(f"no submitted runs under {folder}")
        return plan
    print(format_rows(plan_rows(plan, dry_run)))
    count = sum(run.resubmit for run in plan)
    where = "locally (submitit LocalExecutor)" if local else "to SLURM"
    verb = "would resubmit" if dry_run else "resubmitted"
    print(f"{verb} {count} of {len(plan)} run(s) {where}" + (" (dry run: nothing submitted)" if dry_run else ""))
    return plan
