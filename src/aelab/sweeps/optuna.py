"""Optuna searches that persist, resume, prune and share one study between processes.

`python train.py hparams_search=vae_optuna` runs `OptunaSearch` as Hydra's sweeper (registered
as `hydra_plugins.aelab_plugins.sweeper.OptunaSweeper`). No released Hydra plugin runs current
Optuna (hydra-optuna-sweeper 1.3 pins optuna<3), hence this one, on Hydra's public `Sweeper`
interface. A search's space, in `hydra.sweeper.params` or on the command line:

    choice(8, 16, 32)                categorical        interval(0.1, 0.9)       float
    tag(log, interval(1e-4, 1e-2))   float, log scale   int(interval(8, 64))     integer
    range(1, 9, step=2)              integers 1,3,5,7   tag(log, int(interval(8, 512)))

A plain value on the command line (`data.batch_size=64`) fixes that key instead.

The study lives in `hydra.sweeper.storage` (default: `study.db`, SQLite, in the sweep folder,
whose default is named after the study), so running the same command again goes on with the
same study: the trials it has are kept, a trial whose worker died is marked failed, and the
search stops once `n_trials` trials have completed or been pruned in total. Several workers
(the same command started several times, here or on other machines sharing the storage) fill
one study to exactly `n_trials`. Trial N runs in `<sweep dir>/N/`.

A diverged or failed trial completes with +inf, the worst value (the sampler learns to avoid
it); a pruned one is told PRUNED; only a trial whose process died is FAIL, and does not count.
"""

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

from aelab.errors import ConfigError, report_user_errors
from aelab.quiet import quiet_third_parties
from aelab.runlock import gone
from aelab.sweeps.jobs import read_record, write_record

if TYPE_CHECKING:
    import lightning as L
    import optuna
    from hydra.core.utils import JobReturn

log = logging.getLogger(__name__)
STUDY_FILE = "study.db"
SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's write to the SQLite file
HEARTBEAT_S = 60  # how often a worker marks its running trials as alive
STALE_S = 600  # a trial of another host without a heartbeat for this long has lost its worker
WORKER = "aelab:worker"  # user attribute of a running trial: host, pid, heartbeat
PLUGIN = "hydra_plugins.aelab_plugins.sweeper.OptunaSweeper"


def distribution(key: str, sweep: ChoiceSweep | IntervalSweep | RangeSweep) -> Any:
    """The Optuna distribution of one search dimension, from Hydra's sweep syntax."""
    import optuna.distributions as d

    log_scale = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        if log_scale:
            raise ConfigError(f"{key}: tag(log, ...) takes an interval, not choice(...)")
        # the values of a parsed choice(...) are the YAML scalars Optuna takes
        return d.CategoricalDistribution(sweep.list)  # type: ignore[arg-type]
    if isinstance(sweep, IntervalSweep):
        start, end = sweep.start, sweep.end
        if start is None or end is None:
            raise ConfigError(f"{key}: interval(...) takes a start and an end")
        if isinstance(start, int) and isinstance(end, int):
            return d.IntDistribution(start, end, log=log_scale)
        return d.FloatDistribution(start, end, log=log_scale)
    values = list(sweep.range())
    if not values or log_scale:
        raise ConfigError(f"{key}: range(...) must hold at least one value and takes no tags")
    if all(isinstance(v, int) for v in values):
        return d.IntDistribution(values[0], values[-1], step=int(sweep.step))
    return d.CategoricalDistribution(values)


def dimension(override: Override) -> ChoiceSweep | IntervalSweep | RangeSweep:
    """The search dimension of a sweep override (Optuna searches no glob(...))."""
    value = override.value()
    if not isinstance(value, ChoiceSweep | IntervalSweep | RangeSweep):
        raise ConfigError(f"{override.input_line}: search with choice(...), interval(...), range()")
    return value


def search_space(params: Mapping[str, Any], arguments: Sequence[str]) -> tuple[list[str], dict]:
    """The fixed overrides and the search space: `params` (the config's), then the command
    line, where a sweep adds or replaces a dimension and a plain value fixes its key."""
    parser = OverridesParser.create()
    space: dict[str, Any] = {}
    for key, value in (params or {}).items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        if not override.is_sweep_override():
            raise ConfigError(f"hydra.sweeper.params.{key}={value!r} is not a search dimension")
        space[key] = distribution(key, dimension(override))
    fixed: list[str] = []
    for override in parser.parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(key, dimension(override))
        else:
            space.pop(key, None)
            # parse_overrides keeps each override's input_line
            fixed.append(override.input_line)  # type: ignore[arg-type]
    if not space:
        raise ConfigError("hydra.sweeper.params is empty: nothing to search")
    return fixed, space


def open_storage(url: str | None, sweep_dir: Path) -> "optuna.storages.RDBStorage":
    """The study's storage: `url` (any database URL SQLAlchemy takes), else `study.db` in the
    sweep folder. SQLite waits for other workers' writes instead of failing at once."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    url = url or f"sqlite:///{(sweep_dir / STUDY_FILE).absolute()}"
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except (OperationalError, IntegrityError):  # two workers creating a new file at once
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def worker() -> dict[str, Any]:
    """Who runs a trial: host and process, and when it last said so."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def worker_alive(who: dict[str, Any]) -> bool:
    """Whether the worker of a running trial still runs (on another host: its heartbeat). Asked
    before this worker runs any: a trial of this very process id is a dead one's."""
    return gone(who, STALE_S, own_pid_alive=False) is None


def counted(study: "optuna.Study", before: int | None = None) -> int:
    """Trials that count towards `n_trials` (finished, pruned or still running), of those
    numbered below `before` when given."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if before is None or t.number < before)


def tell(study: "optuna.Study", number: int, record: dict | None, metric: str) -> None:
    """Tell the study how trial `number` ended, from the record its job left (none: its process
    died)."""
    from optuna.trial import TrialState

    if record is None:
        study.tell(number, state=TrialState.FAIL)
    elif record["status"] == "pruned":
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, record["metrics"][metric] if record["status"] == "ok" else math.inf)


def fail_lost_trials(study: "optuna.Study", sweep_dir: Path, metric: str) -> None:
    """Settle the trials left running by a worker that died: one whose job had finished is
    told its result; the others are marked failed, in the study and in their folders."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = trial.user_attrs.get(WORKER)
        if who is None or worker_alive(who):
            continue
        job_dir = sweep_dir / str(trial.number)
        record = read_record(job_dir)
        if record is None:
            record = {
                "job": trial.number,
                "overrides": " ".join(f"{k}={v}" for k, v in trial.params.items()),
                "status": "failed",
                "metrics": {},
                "error": f"its worker (process {who['pid']} on {who['host']}) stopped mid-trial",
                "seconds": 0.0,
            }
            write_record(job_dir, record)
            study.tell(trial.number, state=TrialState.FAIL)
        else:
            tell(study, trial.number, record, metric)
        log.warning(f"trial {trial.number}: {record['error'] or record['status']}")


@contextmanager
def heartbeat(trials: list["optuna.trial.Trial"]) -> Iterator[None]:
    """Keep saying that this worker runs `trials`, so that workers elsewhere do not take them
    for lost."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for trial in trials:
                trial.set_user_attr(WORKER, worker())

    thread = threading.Thread(target=beat, daemon=True, name="aelab-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def consecutive(numbers: list[int]) -> list[list[int]]:
    """Split trial numbers into runs of consecutive ones (a launch numbers its jobs from one
    index on; another worker may have taken the numbers between)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


class OptunaSearch(Sweeper):
    """Hydra sweeper: an Optuna study over `params`, trials launched `n_jobs` at a time by the
    configured launcher (in parallel with `hydra/launcher=processes`)."""

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: Any,
        pruner: Any,
        params: DictConfig | None,
    ) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise ConfigError(
                f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must be at least 1"
            )
        if direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={direction!r}: minimize or maximize")
        self.study_name, self.storage, self.direction = study_name, storage, direction
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler, self.pruner = sampler, pruner
        self.params = cast(dict, OmegaConf.to_container(params)) if params else {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def open_study(self, sweep_dir: Path) -> "optuna.Study":
        """Create the study, or load it to go on with it."""
        import optuna

        quiet_third_parties()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage, sweep_dir),
            sampler=self.sampler,
            pruner=self.pruner,
            # __init__ allows only minimize and maximize
            direction=self.direction,  # type: ignore[arg-type]
            load_if_exists=True,
        )
        if study.trials and self.sampler is not None:
            # the configured seed would draw the first trials' values again
            study.sampler.reseed_rng()
        return study

    def ask(self, study: "optuna.Study", space: dict) -> list["optuna.trial.Trial"]:
        """The next trials to run, at most `n_jobs`, none beyond `n_trials` in the study."""
        from optuna.trial import TrialState

        trials: list[optuna.trial.Trial] = []
        while len(trials) < self.n_jobs and counted(study) < self.n_trials:
            trial = study.ask(space)
            trial.set_user_attr(WORKER, worker())
            if counted(study, before=trial.number) >= self.n_trials:
                # another worker asked in the same instant and took the last trial
                trial.set_user_attr("aelab:surplus", "n_trials were reached by another worker")
                study.tell(trial, state=TrialState.FAIL)
                break
            trials.append(trial)
        return trials

    def sweep(self, arguments: list[str]) -> None:
        with report_user_errors():
            self._sweep(arguments)

    def _sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None, "Hydra calls setup() first"
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        fixed, space = search_space(self.params, arguments)
        study = self.open_study(sweep_dir)
        check_same_problem(study, fixed)
        metric = self.config.get("optimized_metric")
        if not metric:
            raise ConfigError("an Optuna search optimises optimized_metric: set it (val/loss)")
        fail_lost_trials(study, sweep_dir, metric)
        log.info(
            f"Optuna study {self.study_name!r} ({study.sampler.__class__.__name__}), "
            f"{counted(study)} of {self.n_trials} trials done or running, in {sweep_dir}"
        )
        while trials := self.ask(study, space):
            params = {t.number: [f"{k}={v}" for k, v in t.params.items()] for t in trials}
            returns: list[JobReturn] = []
            with heartbeat(trials):
                for run in consecutive(list(params)):
                    overrides = [fixed + params[n] for n in run]
                    returns += self.launcher.launch(overrides, initial_job_idx=run[0])
            for trial in trials:
                tell(study, trial.number, read_record(sweep_dir / str(trial.number)), metric)
            for ret in returns:
                _ = ret.return_value  # an error outside the job's own handling ends the search
        report_best(study, sweep_dir)


FIXED_ATTR = "aelab:fixed_overrides"  # the study's user attribute: what every trial shares


def problem_overrides(fixed: Sequence[str]) -> list[str]:
    """The fixed overrides that define the problem a study optimises: all but where files are
    and how they are loaded (`paths.*`, `data.source.path`, `data.num_workers`, ...), which may
    change when a search moves to another machine."""
    from aelab.validation import DATA_LOADING

    last = {override.split("=", 1)[0].lstrip("+~"): override for override in fixed}
    loading = {f"data.{key}" for key in DATA_LOADING} | {f"data.source.{k}" for k in DATA_LOADING}
    return sorted(o for k, o in last.items() if not k.startswith("paths.") and k not in loading)


def check_same_problem(study: "optuna.Study", fixed: Sequence[str]) -> None:
    """A study goes on only with the fixed overrides it started with: other ones would mix
    trials of two problems in one study and report a best trial of the old one."""
    problem = problem_overrides(fixed)
    if FIXED_ATTR not in study.user_attrs:
        if study.trials:
            log.info(
                f"Optuna study {study.study_name!r} predates aelab's record of its fixed "
                "overrides: going on with it unchecked, and recording this command's"
            )
        study.set_user_attr(FIXED_ATTR, problem)
        return
    kept = study.user_attrs[FIXED_ATTR]
    if kept != problem:
        added = sorted(set(problem) - set(kept)) or "none"
        missing = sorted(set(kept) - set(problem)) or "none"
        raise ConfigError(
            f"Optuna study {study.study_name!r} searched with the fixed overrides {kept}, this "
            f"command has {problem} (new: {added}; gone: {missing}); to start a new study give "
            "hydra.sweeper.study_name=NEW_NAME, or repeat the study's overrides to go on with it"
        )


def report_best(study: "optuna.Study", sweep_dir: Path) -> None:
    """Print the best trial and write it to `optimization_results.yaml` in the sweep folder."""
    from optuna.trial import TrialState

    states = {s.name.lower(): len(study.get_trials(states=(s,))) for s in TrialState}
    try:
        best = study.best_trial
    except ValueError:
        log.warning(f"no trial of study {study.study_name!r} completed: {states}")
        return
    results = {
        "name": study.study_name,
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
        "trials": {state: n for state, n in states.items() if n},
    }
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    log.info(f"Best parameters (trial {best.number}): {best.params}")
    log.info(f"Best value: {best.value}; trials: {results['trials']}")


def trial_pruning(monitor: str | None) -> "L.Callback":
    """The callback that an Optuna search's config adds (`callbacks.trial_pruning`):
    optuna-integration's, which reports `monitor` to this job's trial after every validation and
    stops the trial when the search's pruner says so; a callback that does nothing under
    `hydra/sweeper/pruner=none`."""
    import lightning as L

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    sweeper = hydra_cfg.sweeper if hydra_cfg is not None and multirun else None
    if hydra_cfg is None or sweeper is None or sweeper.get("_target_") != PLUGIN:
        raise ConfigError(
            "callbacks.trial_pruning reports to the trial of an Optuna search "
            "(hparams_search=...); remove it with ~callbacks.trial_pruning"
        )
    if sweeper.get("pruner") is None:
        return L.Callback()
    if not monitor:
        raise ConfigError("hydra.sweeper.pruner needs optimized_metric, the metric it watches")
    import optuna
    from hydra.utils import instantiate
    from optuna_integration import PyTorchLightningPruningCallback

    storage = open_storage(sweeper.storage, Path(hydra_cfg.sweep.dir))
    study = optuna.load_study(
        study_name=sweeper.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=instantiate(sweeper.pruner),
    )
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, hydra_cfg.job.num)
    return PyTorchLightningPruningCallback(optuna.trial.Trial(study, trial_id), monitor)
