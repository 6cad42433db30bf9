"""Run an experiment on SLURM (or locally) through submitit, with requeue and exact resume.

    python scripts/submit.py -C configs/default.yaml --slurm.partition gpu --slurm.timeout_min 240
    python scripts/submit.py -C configs/default.yaml --sweep optimizer.lr=0.1,0.01 --sweep training.seed=0,1
    python scripts/submit.py -C configs/default.yaml --local        # submitit's LocalExecutor, no cluster
    python scripts/submit.py --resume slurm_logs [--dry-run]         # resubmit what failed (sweeps.py)

Every job trains in a fixed run folder (`logging.folder/logging.run_id`, decided at submission). On USR2
(time limit or preemption) the Trainer finishes its step, saves `run_dir/checkpoints/last.pt` and the job
requeues itself; the new process resumes from that checkpoint by itself. Plain sbatch scripts use
`python -m torchstrap_runtime.launcher run PKG.MODULE:Trainer [config args]`, which does the same without
submitit (it calls `scontrol requeue` itself).
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from . import config as cfg
from . import distributed
from .command_line import read_argv, split_options
from .config import Dict, Int, Param, Section, Str
from .provenance import new_run_id
from .run_folder import run_path
from .errors import UserError, exit_on_user_error, fail


def declare_slurm_section() -> None:
    """Declare the `slurm` config section (done on import; again after `config.reset_config()` in tests)."""
    try:
        cfg.get_value("slurm.partition")
        return
    except Exception:
        pass
    Section("slurm", "SLURM submission (scripts/submit.py)").params(
        partition=Param(Str(), "partition to submit to (required for SLURM; not for --local)", default=""),
        nodes=Param(Int(min=1), "number of nodes", default=1),
        tasks_per_node=Param(Int(min=1), "processes per node (one per GPU); >1 runs DDP", default=1),
        gpus_per_node=Param(Int(min=0), "GPUs per node", default=0),
        cpus_per_task=Param(Int(min=1), "CPU cores per process (data loading workers)", default=4),
        timeout_min=Param(Int(min=1), "time limit per job in minutes; the job requeues itself when it hits it", default=60),
        mem_gb=Param(Int(min=0), "memory per node in GB (0 = the cluster's default)", default=0),
        signal_delay_s=Param(Int(min=0), "USR2 arrives this many seconds before the time limit", default=120),
        max_requeues=Param(Int(min=0), "give up after this many time-limit requeues (preemptions do not count)", default=20),
        array_parallelism=Param(Int(min=1), "at most this many sweep jobs run at once", default=64),
        job_name=Param(Str(), "job name ('' = the trainer's module)", default=""),
        extra=Param(Dict(), "more sbatch options as a dict, e.g. {account: abc, qos: high, constraint: a100}",
                    default={}),
        folder=Param(Str(), "where submitit writes job scripts, pickles and stdout/stderr (%j = job id)",
                     default="slurm_logs/%j"),
    )


declare_slurm_section()


class LaunchError(UserError, ValueError):
    """Bad launcher input, found before anything is submitted."""


# --------------------------------------------------------------------------- sbatch options

# The long options of sbatch (Slurm 22-24). Keys of `slurm.extra` must be one of these.
SBATCH_OPTIONS = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
container-id contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot
dependency distribution error exclude exclusive export export-file extra extra-node-info get-user-env gid
gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint hold ignore-pbs input
job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu
mincpus network nice no-kill no-requeue nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu
ntasks-per-node ntasks-per-socket open-mode output overcommit oversubscribe parsable partition power prefer
priority profile propagate qos quiet reboot requeue reservation signal sockets-per-node spread-job switches
test-only thread-spec threads-per-core time time-min tmp tres-per-task uid use-min-nodes verbose wait
wait-all-nodes wckey wrap
""".split())

# sbatch options the launcher sets itself from the `slurm` section (or must own to requeue correctly).
MANAGED_OPTIONS = {
    "partition": "slurm.partition", "nodes": "slurm.nodes", "ntasks-per-node": "slurm.tasks_per_node",
    "gpus-per-node": "slurm.gpus_per_node", "cpus-per-task": "slurm.cpus_per_task",
    "time": "slurm.timeout_min", "mem": "slurm.mem_gb", "signal": "slurm.signal_delay_s",
    "job-name": "slurm.job_name", "output": "slurm.folder", "error": "slurm.folder",
    "array": "--sweep", "wrap": "(not supported)", "open-mode": "(always append)",
}

# Options submitit's SlurmExecutor takes by name; every other sbatch option goes through additional_parameters.
SUBMITIT_NAMED = frozenset("""
qos comment constraint exclude account gres mail_type mail_user nodelist dependency exclusive mem_per_gpu
mem_per_cpu cpus_per_gpu gpus_per_task wckey
""".split())


def check_extra_options(extra: Any) -> dict[str, Any]:
    """Validate `slurm.extra` (a dict, or its JSON/YAML text); returns {sbatch-option: value}."""
    if isinstance(extra, str):
        try:
            extra = yaml.safe_load(extra) if extra.strip() else {}
        except yaml.YAMLError as e:
            raise LaunchError(f"slurm.extra must be a dict of sbatch options, got unparsable text {extra!r}: {e}")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise LaunchError(f"slurm.extra must be a dict of sbatch options, e.g. {{account: abc}}, got {extra!r}")
    out = {}
    for key, value in extra.items():
        option = str(key).strip().lstrip("-").replace("_", "-")
        if option in MANAGED_OPTIONS:
            raise LaunchError(f"slurm.extra: sbatch option '{key}' is set by the launcher; "
                              f"use {MANAGED_OPTIONS[option]} instead")
        if option not in SBATCH_OPTIONS:
            close = difflib.get_close_matches(option, SBATCH_OPTIONS, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise LaunchError(f"slurm.extra: unknown SLURM option '{key}'{hint}; keys must be sbatch long options, "
                              f"see `man sbatch`")
        out[option] = value
    return out


def slurm_executor_parameters(slurm: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `submitit.SlurmExecutor.update_parameters` for a `slurm` section (its values
    checked by the config)."""
    params: dict[str, Any] = dict(
        nodes=int(slurm["nodes"]), ntasks_per_node=int(slurm["tasks_per_node"]),
        cpus_per_task=int(slurm["cpus_per_task"]), time=int(slurm["timeout_min"]),
        signal_delay_s=int(slurm["signal_delay_s"]), array_parallelism=int(slurm["array_parallelism"]),
        additional_parameters={"requeue": True},
    )
    if slurm["partition"]:
        params["partition"] = slurm["partition"]
    if int(slurm["gpus_per_node"]) > 0:
        params["gpus_per_node"] = int(slurm["gpus_per_node"])
    if int(slurm["mem_gb"]) > 0:
        params["mem"] = f"{int(slurm['mem_gb'])}G"
    if slurm["job_name"]:
        params["job_name"] = slurm["job_name"]
    for option, value in check_extra_options(slurm["extra"]).items():
        name = option.replace("-", "_")
        if name in SUBMITIT_NAMED:
            params[name] = value
        else:
            params["additional_parameters"][option] = value
    return params


def check_partition(partition: str) -> None:
    """Fail early when the partition is missing, or unknown to this cluster's `sinfo`."""
    if not partition:
        raise LaunchError("slurm.partition is missing: pass --slurm.partition NAME (see `sinfo -s`), "
                          "or --local to run without SLURM")
    if shutil.which("sinfo") is None:
        raise LaunchError("cannot submit to SLURM: `sinfo`/`sbatch` are not on PATH (use --local to run here)")
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    known = sorted(set(out.stdout.split()))
    if out.returncode == 0 and known and partition not in known:
        raise LaunchError(f"slurm.partition '{partition}' does not exist on this cluster (known: {', '.join(known)})")


def check_writable_folder(folder: Path, key: str) -> Path:
    """Create `folder` and prove it is writable with a probe file; LaunchError naming `key` otherwise."""
    folder = Path(folder).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise LaunchError(f"{key}: folder '{folder}' is not writable ({e.strerror or e})") from None
    return folder


# --------------------------------------------------------------------------- sweeps and run ids

def parse_sweeps(specs: list[str], config: dict[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """`["optimizer.lr=0.1,0.01", "training.seed=0,1"]` -> [("optimizer.lr", [0.1, 0.01]), ...] (YAML-typed)."""
    sweeps = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-")
        section, _, name = key.partition(".")
        if not sep or not values.strip():
            raise LaunchError(f"--sweep {spec!r}: expected SECTION.KEY=V1,V2,...")
        if section not in config or name not in config[section]:
            raise LaunchError(f"--sweep {spec!r}: unknown config key '{key}'")
        if any(key == k for k, _ in sweeps):
            raise LaunchError(f"--sweep {spec!r}: '{key}' is swept twice")
        sweeps.append((key, [yaml.safe_load(v.strip()) for v in values.split(",")]))
    return sweeps


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def expand_sweeps(config: dict[str, dict[str, Any]], sweeps: list[tuple[str, list[Any]]]) -> list[dict]:
    """One resolved config per point of the sweeps' product, each with its own `logging.run_id`."""
    base = json.loads(json.dumps(config))
    base_id = base["logging"]["run_id"] or new_run_id()
    base["logging"]["run_id"] = base_id
    if not sweeps:
        return [base]
    out = []
    for values in itertools.product(*[v for _, v in sweeps]):
        point = json.loads(json.dumps(base))
        parts = []
        for (key, _), value in zip(sweeps, values):
            section, name = key.split(".", 1)
            point[section][name] = value
            parts.append(f"{key}={_slug(value)}")
        point["logging"]["run_id"] = base_id + "__" + "__".join(parts)
        out.append(point)
    return out


def check_points(points: list[dict]) -> None:
    """Validate every sweep point with the config's own checkers (then restore the current values)."""
    saved = cfg.config_as_dict()
    try:
        for point in points:
            try:
                cfg.set_values(point)
            except cfg.ConfigError as e:
                raise LaunchError(f"--sweep point {point['logging']['run_id']!r}: {e}") from None
    finally:
        cfg.set_values(saved)


# --------------------------------------------------------------------------- the job

def import_object(path: str) -> Any:
    """`"pkg.module:Name"` -> the object (also accepts `"pkg.module.Name"`)."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LaunchError(f"cannot import trainer '{path}': {e}") from e


def import_modules(names: tuple[str, ...] | list[str]) -> None:
    """Import what declares config sections: a package with every module under it (the experiment's `pkg`), or
    a single module (`pkg.config`)."""
    for name in names:
        try:
            cfg.import_package(name)
        except ImportError as e:
            raise LaunchError(f"cannot import module '{name}': {e}") from e


def import_root(path: str) -> str:
    """The sys.path entry that `"pkg.module:Name"` was imported from (so job processes find it too)."""
    name = path.partition(":")[0] if ":" in path else path.rpartition(".")[0]
    file = Path(sys.modules[name].__file__).resolve()
    depth = name.count(".") + (1 if file.name == "__init__.py" else 0)
    return str(file.parents[depth])


class TrainJob:
    """The picklable submitit job: rebuilds the config and the Trainer in the job's process and trains.

    submitit calls `checkpoint()` from its USR2 handler. We catch USR2 first: the handler only asks the
    Trainer to stop, the loop finishes its step, saves `last.pt` and returns; then submitit's own handler
    runs (our `checkpoint()` + `scontrol requeue`). The requeued job resumes from `last.pt`.
    """

    def __init__(self, config: dict[str, dict[str, Any]], trainer: str, imports: tuple[str, ...] = (),
                 sys_path: tuple[str, ...] = ()) -> None:
        self.config = config
        self.trainer = trainer
        self.imports = tuple(imports)
        self.sys_path = tuple(sys_path)
        self._signal: int | None = None
        self._trainer_obj: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "trainer": self.trainer, "imports": self.imports, "sys_path": self.sys_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def run_dir(self) -> Path:
        return run_path(self.config["logging"]["folder"], self.config["logging"]["run_id"])

    def _on_signal(self, signum: int, frame: Any = None) -> None:
        self._signal = signum
        if self._trainer_obj is not None:
            self._trainer_obj.request_stop()

    def __call__(self) -> dict[str, Any]:
        for entry in reversed(self.sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        import_modules(self.imports)
        submitit_handler = _export_submitit_distributed_env()
        result = run_training(self.config, self.trainer, self)
        if self._signal is not None and not result["finished"]:
            if callable(submitit_handler):
                submitit_handler(self._signal, None)  # submitit: checkpoint() + requeue + exit (rank 0)
        distributed.cleanup_distributed()
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on USR2 once the Trainer has saved; the new job resumes from last.pt."""
        import submitit
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.trainer, self.imports, self.sys_path))


def _export_submitit_distributed_env() -> Any:
    """Inside a submitit job: export RANK/WORLD_SIZE/MASTER_* and return submitit's USR2 handler."""
    import submitit
    try:
        submitit.JobEnvironment()
    except RuntimeError:
        return None
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    usr2 = submitit.JobEnvironment._usr_sig()
    return signal.getsignal(usr2)


def run_training(config: dict[str, dict[str, Any]], trainer_path: str, job: TrainJob | None = None
                 ) -> dict[str, Any]:
    """Set the config, build the Trainer, train; USR2 makes the Trainer save and return early."""
    job = job or TrainJob(config, trainer_path)
    trainer_cls = import_object(trainer_path)   # importing declares the experiment's config sections
    cfg.set_values(config)
    previous = signal.signal(signal.SIGUSR2, job._on_signal)
    try:
        trainer = trainer_cls()
        job._trainer_obj = trainer
        if job._signal is None:
            trainer.run()
        # the loop only returns early when USR2 asked it to stop (it saved last.pt first)
        finished = job._signal is None or _is_finished(trainer)
        return {"run_dir": str(trainer.run_dir), "epoch": int(trainer.epoch), "step": int(trainer.step),
                "finished": finished, "rank": int(getattr(trainer, "rank", 0))}
    finally:
        signal.signal(signal.SIGUSR2, previous)
        if job._trainer_obj is not None:
            job._trainer_obj.close()
        job._trainer_obj = None


def _is_finished(trainer: Any) -> bool:
    training = cfg.config_as_dict()["training"]
    return (bool(training.get("eval_only")) or getattr(trainer, "finished", False)
            or int(trainer.epoch) >= int(training["epochs"]))


# --------------------------------------------------------------------------- submission

def make_executor(slurm: dict[str, Any], local: bool) -> Any:
    """A submitit LocalExecutor (`local`) or SlurmExecutor configured from the `slurm` section."""
    import submitit
    # the folder that holds one sub-folder per job (slurm_logs/%j -> slurm_logs)
    folder = check_writable_folder(Path(slurm["folder"]).parent if slurm["folder"].endswith("%j")
                                   else Path(slurm["folder"]), "slurm.folder")
    folder = str(folder / "%j") if slurm["folder"].endswith("%j") else str(folder)
    params = slurm_executor_parameters(slurm)
    if local:
        executor = submitit.LocalExecutor(folder, max_num_timeout=int(slurm["max_requeues"]))
        executor.update_parameters(timeout_min=params["time"], tasks_per_node=params["ntasks_per_node"],
                                   gpus_per_node=params.get("gpus_per_node", 0),
                                   signal_delay_s=params["signal_delay_s"])
        return executor
    check_partition(slurm["partition"])
    executor = submitit.SlurmExecutor(folder, max_num_timeout=int(slurm["max_requeues"]))
    executor.update_parameters(**params)
    return executor


def submit(config: dict[str, dict[str, Any]], trainer: str, sweeps: list[str] = (), local: bool = False,
           imports: tuple[str, ...] = ()) -> list[tuple[Any, Path]]:
    """Validate everything, then submit one job (or one array job over the sweeps' product).

    Returns `(submitit job, run folder)` pairs. Nothing is submitted when any input is bad (LaunchError).
    """
    config = json.loads(json.dumps(config))
    slurm = config["slurm"]
    if not slurm["job_name"]:
        slurm["job_name"] = trainer.replace(":", ".").split(".")[0]
    points = expand_sweeps(config, parse_sweeps(list(sweeps), config))
    if sweeps:
        check_points(points)
    logs = check_writable_folder(Path(config["logging"]["folder"]), "logging.folder")
    executor = make_executor(slurm, local)
    for point in points:
        point["logging"]["folder"] = str(logs)
    import_object(trainer)
    sys_path = tuple(dict.fromkeys(import_root(name) for name in (trainer, *[m + ":_" for m in imports])))
    fns = [TrainJob(point, trainer, imports, sys_path) for point in points]
    return submit_jobs(executor, fns)


def submit_jobs(executor: Any, fns: list[TrainJob]) -> list[tuple[Any, Path]]:
    """Submit `fns`: one job, or one job array (`slurm.array_parallelism` at once); `(job, run folder)` pairs."""
    if len(fns) == 1:
        jobs = [executor.submit(fns[0])]
    else:
        with executor.batch():
            jobs = [executor.submit(fn) for fn in fns]
    return [(job, fn.run_dir) for job, fn in zip(jobs, fns)]


def resubmit(fns: list[TrainJob], local: bool = False) -> list[tuple[Any, Path]]:
    """Submit train jobs again as they are (`scripts/submit.py --resume`): those with the same `slurm` section
    as one job array; `(job, run folder)` pairs."""
    groups: dict[str, list[TrainJob]] = {}
    for fn in fns:
        groups.setdefault(json.dumps(fn.config["slurm"], sort_keys=True), []).append(fn)
    return [pair for alike in groups.values()
            for pair in submit_jobs(make_executor(alike[0].config["slurm"], local), alike)]


def split_launcher_args(argv: list[str]) -> tuple[list[str], list[str], bool, bool]:
    """Take `--sweep K=V,..` (repeatable), `--local` and `--wait` out of argv; the rest is config."""
    try:
        found, rest = split_options(argv, flags=["--local", "--wait"], options=["--sweep"])
    except ValueError:
        raise LaunchError("--sweep needs a value: --sweep SECTION.KEY=V1,V2") from None
    return rest, found["--sweep"], bool(found["--local"]), bool(found["--wait"])


def main(trainer: str, argv: list[str] | None = None, imports: tuple[str, ...] = (),
         defaults_file: str | os.PathLike | None = None) -> list[tuple[Any, Path]]:
    """Entry point of the generated `scripts/submit.py`: `imports` declare config sections (the experiment's
    package: every module of it), `defaults_file` is read before the command line's -C files."""
    argv = sys.argv[1:] if argv is None else list(argv)
    status = [option for option in read_argv(argv) if option.name == "--status"]
    if status:   # each job's state next to its run row
        return print_sweep_status([status[0].value] if status[0].value is not None else [])
    if any(option.name == "--resume" for option in read_argv(argv)):
        from .sweeps import resume_command
        return resume_command(argv, resubmit)
    try:
        rest, sweeps, local, wait = split_launcher_args(argv)
        import_modules(imports)  # declare the experiment's sections before the config is parsed
        import_object(trainer)
        cfg.load_config(rest, description=f"Submit {trainer} to SLURM (or --local) with submitit. Launcher "
                        "options: --sweep SECTION.KEY=V1,V2 (repeatable), --local, --wait.",
                        defaults_file=defaults_file)
        jobs = submit(cfg.config_as_dict(), trainer, sweeps, local, tuple(imports))
    except UserError as e:
        fail(e, argv=argv)
    where = "locally (submitit LocalExecutor)" if local else "to SLURM"
    print(f"submitted {len(jobs)} job(s) {where}")
    for job, run_dir in jobs:
        print(f"  job {job.job_id}: run folder {run_dir}")
    if wait:
        for job, _ in jobs:
            print(json.dumps(job.result()))
    return jobs


def print_sweep_status(args: list[str]) -> list:
    """`submit.py --status [SWEEP_DIR]`: every job under SWEEP_DIR (default: slurm.folder without %j) with its
    state (sacct, else submitit's files) next to its run's row (`torchstrap runs`)."""
    from .runs import RunsError, format_rows, sweep_rows

    folder = args[0] if args and not args[0].startswith("-") else "slurm_logs"
    try:
        rows = sweep_rows(folder)
    except RunsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_rows(rows) if rows else f"no submitit jobs under {folder}")
    return rows


# --------------------------------------------------------------------------- sbatch without submitit

def run_here(trainer: str, argv: list[str], imports: tuple[str, ...] = (),
             defaults_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train in this process (e.g. under `srun` in a plain sbatch script); on USR2 save and requeue.

    The run folder must be fixed across requeues: pass `--logging.run_id` (e.g. the SLURM job id).
    Rank 0 calls `scontrol requeue $SLURM_JOB_ID` after the checkpoint is saved.
    """
    import_modules(imports)
    import_object(trainer)
    cfg.load_config(argv, description=f"Train {trainer} here (requeue on USR2 under SLURM).",
                    defaults_file=defaults_file)
    config = cfg.config_as_dict()
    if not config["logging"]["run_id"]:
        config["logging"]["run_id"] = os.environ.get("SLURM_JOB_ID") or new_run_id()
    job = TrainJob(config, trainer, tuple(imports))
    result = run_training(config, trainer, job)
    if job._signal is not None and not result["finished"] and distributed.is_main_process():
        job_id = distributed.slurm_job_id()
        if job_id:
            print(f"torchstrap: checkpoint saved, requeueing SLURM job {job_id}", flush=True)
            subprocess.run(["scontrol", "requeue", job_id], check=False)
    distributed.cleanup_distributed()
    return result


def cli(argv: list[str]) -> None:
    """`python -m torchstrap_runtime.launcher run PKG.MODULE:Trainer [--import PKG]... [--defaults-file FILE]
    [config args]`."""
    usage = " ".join(cli.__doc__.split()).strip("`.")
    if len(argv) < 2 or argv[0] != "run":
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    try:
        found, rest = split_options(argv[2:], options=["--import", "--defaults-file"])
    except ValueError as e:
        print(f"error: {e}; usage: {usage}", file=sys.stderr)
        raise SystemExit(2) from None
    defaults_file = found["--defaults-file"][-1] if found["--defaults-file"] else None
    exit_on_user_error(lambda args: run_here(argv[1], args, tuple(found["--import"]), defaults_file), rest)


if __name__ == "__main__":
    # run through the importable module, so the `slurm` section and TrainJob have one identity
    from torchstrap_runtime.launcher import cli as _cli
    _cli(sys.argv[1:])
