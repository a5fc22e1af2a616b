"""What every command line does around its `@hydra.main` function (`run_app`): resolvers and
plugins registered, composition errors in one line, the output folder checked. Only Hydra and
OmegaConf are imported here, so that `--help` answers at once."""

import difflib
import functools
import os
import sys
from collections.abc import Callable

import hydra
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from aelab.config import CONFIG_MODULE, prepare_hydra, writable_dir_error
from aelab.errors import SweepStopped, report_user_errors


def register_plugins() -> None:
    """aelab's Hydra plugins, registered by hand: an editable install serves
    `hydra_plugins.aelab_plugins` through setuptools' import hook (configs/ is mapped into the
    package), whose namespace entry Hydra's own plugin scan cannot list."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.aelab_plugins.launcher import JobProcessLauncher
    from hydra_plugins.aelab_plugins.sweeper import OptunaSweeper

    for plugin in (JobProcessLauncher, OptunaSweeper):
        Plugins.instance().register(plugin)


def run_app(hydra_main: Callable[[], object]) -> None:
    """What every entry point does: register the resolvers and plugins, then run the module's
    `@hydra.main` function (kept in each module: Hydra names the job after it).

    A sweep stopped by SIGTERM is one line too (`SweepStopped`, which Hydra lets through). A
    command line that does not compose is one line: a mistyped key (`model.latnt_dim=3`)
    names the key it is closest to, where Hydra advises adding it with `+` (which only moves the
    error: a key that is set and unused is refused). Hydra hands composition errors to the caller
    while HYDRA_FULL_ERROR is set; it is set here until the run starts (`CheckOutputDir`), unless
    the user set it, so errors in the run itself are reported as Hydra and aelab always do."""
    prepare_hydra()
    register_plugins()
    if "HYDRA_FULL_ERROR" in os.environ:
        hydra_main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _FULL_ERROR_SET_HERE.add(True)
    try:
        hydra_main()
    except CompactHydraException as err:
        print(composition_error(err), file=sys.stderr)
        raise SystemExit(1) from None
    except SweepStopped as stop:
        print(f"error: {stop}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        composed()


def command(config_name: str, task: Callable[[DictConfig], object]) -> Callable[[], None]:
    """The console-script entry point that runs `task` on the composed `config_name`, a user's
    error in one line (`report_user_errors`), through `run_app`. `functools.wraps` keeps the
    task's module on the function Hydra is given: Hydra names the job (and its log file) after
    it."""

    @hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name=config_name)
    @functools.wraps(task)
    def hydra_main(cfg: DictConfig) -> None:
        with report_user_errors():
            task(cfg)

    return functools.partial(run_app, hydra_main)


_FULL_ERROR_SET_HERE: set[bool] = set()  # {True} while run_app's HYDRA_FULL_ERROR is set


def composed() -> None:
    """The config composed: Hydra reports errors as usual from here on."""
    if _FULL_ERROR_SET_HERE:
        _FULL_ERROR_SET_HERE.clear()
        os.environ.pop("HYDRA_FULL_ERROR", None)


def composition_error(err: CompactHydraException) -> str:
    """`error: model.latnt_dim is not a key of the config (did you mean model.latent_dim?) ...`
    for an unknown key; Hydra's own message (an unknown option lists the known ones) else."""
    cause = err.__cause__
    parent = getattr(cause, "parent_node", None)
    key = getattr(cause, "full_key", "")
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and isinstance(parent, DictConfig):
        name = key.rsplit(".", 1)[-1]
        where = key[: -len(name) - 1]
        known = [str(k) for k in parent if not str(k).startswith("_") and k != "hydra"]
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"did you mean {where + '.' if where else ''}{close[0]}?"
            if close
            else f"{where or 'the top level'} has {', '.join(known)}"
        )
        return (
            f"error: {key} is not a key of the config ({hint}); +{key}=... would add it, "
            "for a key that the code reads (a Trainer argument, say)"
        )
    lines = [str(err), *([str(cause)] if isinstance(cause, OmegaConfBaseException) else [])]
    return "\n".join(lines)


class CheckOutputDir(Callback):
    """Hydra callback: an unwritable output folder is one clear line, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        composed()
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        composed()
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)

    @staticmethod
    def _check(key: str, folder: str) -> None:
        error = writable_dir_error(key, folder)
        if error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1)
