import itertools
import re

import pytest
import torch
from conftest import REPO, run_python, run_train, small_run_overrides
from hydra.utils import instantiate

from aelab.config import CONFIG_DIR
from aelab.train import absolute_paths

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert {"ae", "deep_ae", "vae", "conv_ae", "conv_vae", "beta_vae"} <= set(MODELS)
    assert {"mnist", "fashion", "idx", "folder", "torchvision", "cifar10", "svhn"} <= set(DATA)
    assert "celeba" in DATA
    assert {"shapes", "dsprites", "factor_npz"} <= set(DATA)
    for group, options in {
        "net": {"mlp", "conv", "resnet"},
        "scheduler": {"cosine", "step", "iwae"},
        "trainer": {"default", "cpu", "gpu"},
        "logger": {"tensorboard", "csv", "none"},
        "debug": {"fast", "overfit"},
        "callbacks": {"default", "none", "early_stopping", "lr_monitor", "model_checkpoint"},
    }.items():
        assert options <= {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}


# Every model with the IDX datasets; the other sources (the same datamodule) with one model.
IDX_DATA = ("fashion", "idx", "mnist")
PAIRS = [*itertools.product(MODELS, IDX_DATA), *(("vae", d) for d in DATA if d not in IDX_DATA)]


@pytest.mark.parametrize(("model", "data"), PAIRS)
def test_every_model_and_data_compose_and_instantiate(compose_cfg, tmp_path, model, data):
    where = "data.source.name=CIFAR10" if data == "torchvision" else f"data.source.path={tmp_path}"
    if data in ("cifar10", "svhn", "celeba", "mnist", "fashion", "shapes", "dsprites"):
        where = f"paths.data_dir={tmp_path}"
    cfg = compose_cfg(f"model={model}", f"data={data}", where, output_dir=tmp_path)
    source = {
        "folder": "FolderSource",
        "shapes": "ShapesSource",
        "dsprites": "DspritesSource",
        "factor_npz": "FactorNpzSource",
    }.get(data, "IdxSource" if data in IDX_DATA else "Torchvision")
    assert cfg.data.source._target_.startswith(f"aelab.data.{source}")
    assert cfg.model.optimizer._partial_ is True
    datamodule = instantiate(cfg.data, seed=0)
    assert datamodule.batch_size == cfg.data.batch_size
    net = instantiate(cfg.model, image_shape=[1, 28, 28], _convert_="all")
    assert net.hparams["image_shape"] == [1, 28, 28]
    assert net.hparams["net"]["_target_"] == cfg.model.net._target_
    # hyperparameters are plain data (a checkpoint loads weights-only), no nn.Module in them
    assert all(isinstance(v, int | float | str | list | dict | None) for v in net.hparams.values())
    optimizer = net.configure_optimizers()
    if isinstance(optimizer, list):  # FactorVAE: the VAE's optimizer, then its discriminator's
        optimizer, discriminator = optimizer
        assert discriminator.defaults["fused"] is True
    assert optimizer.defaults["lr"] == cfg.model.optimizer.lr
    assert optimizer.defaults["fused"] is True  # one operation per update, also on CPU


def test_model_defaults_match_the_tutorials(compose_cfg):
    vae = compose_cfg("model=vae").model
    assert (vae.net.hidden_dims, vae.latent_dim, vae.optimizer.lr) == ([400], 20, 1e-3)
    deep = compose_cfg("model=deep_ae").model
    assert (deep.net.hidden_dims, deep.latent_dim, deep.optimizer.weight_decay) == (
        [128, 64, 12],
        3,
        1e-5,
    )
    ae = compose_cfg("model=ae").model
    assert (ae.net.hidden_dims, ae.latent_dim, ae.net.activation) == ([], 128, "relu")
    conv = compose_cfg("model=conv_vae").model
    assert conv.net == {
        "_target_": "aelab.nets.ConvNet",
        "channels": [32, 64],
        "activation": "relu",
    }
    cfg = compose_cfg()
    assert cfg.data.source.name == "mnist" and cfg.model._target_ == "aelab.models.VAE"
    assert cfg.data.batch_size == 128 and cfg.data.val_size == 5000


def test_any_model_takes_either_network(compose_cfg):
    vae = instantiate(compose_cfg("model=vae", "net=conv").model, image_shape=[1, 28, 28])
    assert any(isinstance(m, torch.nn.Conv2d) for m in vae.modules())
    conv_ae = instantiate(compose_cfg("model=conv_ae", "net=mlp").model, image_shape=[1, 28, 28])
    assert not any(isinstance(m, torch.nn.Conv2d) for m in conv_ae.modules())


def test_trainer_variants_inherit_default(compose_cfg):
    default = compose_cfg().trainer
    assert default.accelerator == "auto"
    for variant, accelerator in [("cpu", "cpu"), ("gpu", "gpu")]:
        trainer = compose_cfg(f"trainer={variant}").trainer
        assert trainer.accelerator == accelerator
        assert trainer.max_epochs == default.max_epochs


def test_paths_are_relative_to_the_working_folder_or_the_environment(compose_cfg, monkeypatch):
    assert (compose_cfg().paths.data_dir, compose_cfg().paths.log_dir) == ("data", "logs")
    monkeypatch.setenv("AELAB_DATA_DIR", "/somewhere/data")
    monkeypatch.setenv("AELAB_LOG_DIR", "/somewhere/logs")
    assert compose_cfg().paths.data_dir == "/somewhere/data"
    assert compose_cfg().paths.log_dir == "/somewhere/logs"


def test_scheduler_is_a_partial_completed_with_the_optimizer(compose_cfg):
    model = instantiate(
        compose_cfg("scheduler=cosine", "trainer.max_epochs=7").model, image_shape=[1, 8, 8]
    )
    configured = model.configure_optimizers()
    scheduler = configured["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 7 and scheduler.optimizer is configured["optimizer"]
    assert configured["lr_scheduler"]["interval"] == "epoch"
    plain = instantiate(compose_cfg().model, image_shape=[1, 8, 8])
    assert isinstance(plain.configure_optimizers(), torch.optim.Adam)


def test_optional_callbacks_are_added_by_name(compose_cfg, tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from aelab.training import instantiate_all

    cfg = compose_cfg(
        "callbacks=[default,early_stopping,lr_monitor]",
        "callbacks.early_stopping.patience=5",
        output_dir=tmp_path,
    )
    callbacks = {type(c): c for c in instantiate_all(cfg.callbacks)}
    assert callbacks[EarlyStopping].patience == 5 and LearningRateMonitor in callbacks
    default = instantiate_all(compose_cfg(output_dir=tmp_path).callbacks)
    assert len(callbacks) == len(default) + 2  # those of `default` and the two added
    assert EarlyStopping not in {type(c) for c in default}


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        # a key the convolutional net has no use for: Hydra refuses to set it at all
        (["model=conv_vae", "model.hidden_dims=[800]"], ["hidden_dims"]),
        (["model=conv_vae", "model.net.hidden_dims=[800]"], ["hidden_dims"]),
        # added anyway: our check names the key and what the net takes
        (
            ["model=conv_vae", "+model.net.hidden_dims=[800]"],
            [
                "error: model.net.hidden_dims is not an argument of aelab.nets.ConvNet",
                "channels, activation",
                "~model.net.hidden_dims",
            ],
        ),
        (["model=ae", "net=conv"], ["error: model.net.hidden_dims is not an argument"]),
        (["+model.depth=3"], ["error: model.depth is not an argument of aelab.models.VAE"]),
        (["+data.shuffle=false"], ["error: data.shuffle is not an argument of aelab.data."]),
        (
            ["+logger.tensorboard.log_grpah=false"],
            ["error: logger.tensorboard.log_grpah is not an argument of aelab.loggers."],
        ),
    ],
)
def test_a_key_that_nothing_reads_is_an_error(refusal, data_dir, tmp_path, overrides, fragments):
    stderr = refusal(*small_run_overrides(data_dir), *overrides, output_dir=tmp_path)
    for fragment in fragments:
        assert fragment in stderr, stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists()  # refused before training


def test_a_key_that_nothing_reads_is_refused_by_the_command_line(data_dir, tmp_path):
    """The same check, through `python train.py` itself: exit code 1, one line, no run folder."""
    run = tmp_path / "run"
    result = run_train(*small_run_overrides(data_dir), "+model.depth=3", f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: model.depth is not an argument of aelab.models.VAE")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not run.exists()


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["model.latnt_dim=3"], "error: model.latnt_dim is not a key of the config (did you mean"),
        (["trainer.limit_train_batches=3"], "(trainer has default_root_dir, min_epochs,"),
        # added with +, it composes, and the run's own check refuses it: one line too, no
        # traceback (Hydra reports the run's errors as usual once the config is composed)
        (["+model.latnt_dim=3"], "error: model.latnt_dim is not an argument of aelab.models.VAE"),
    ],
)
def test_a_mistyped_key_names_the_nearest_one_in_one_line(refusal, tmp_path, overrides, line):
    """Not Hydra's advice to add the key with +, which a key nothing reads only moves."""
    stderr = refusal(*overrides, "paths.data_dir=/nonexistent", output_dir=tmp_path / "run")
    assert stderr.startswith("error: ") and line in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "To append" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run").exists()


def test_a_mistyped_key_is_one_line_from_the_command_line(tmp_path):
    """The composition error through `python train.py`: Hydra hands it to aelab's CLI, which
    prints its one line and leaves no run folder."""
    result = run_train("model.latnt_dim=3", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 1
    line = "error: model.latnt_dim is not a key of the config (did you mean model.latent_dim?)"
    assert result.stderr.startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "To append" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_help_lists_groups_and_options():
    result = run_train("--help")
    assert result.returncode == 0
    for line in [
        "model: ae, beta_tcvae, beta_vae, capacity_vae, conv_ae, conv_vae, deep_ae, factor_vae, iwae,"
        " ladder_vae, two_layer_vae, vae, vampprior, vqvae, wae",
        "net: conv, mlp, resnet",
        "data: celeba, cifar10, dsprites, factor_npz, fashion, folder, idx, mnist, shapes, svhn,"
        " torchvision",
        "logger: csv, many, mlflow, none, tensorboard, wandb",
        "scheduler: cosine, iwae, step",
        "trainer: cpu, ddp, ddp_cpu, default, gpu",
    ]:
        assert line in result.stdout
    # only the groups training composes: not the results command's `table`, nor `protocol`
    assert "table:" not in result.stdout and "protocol:" not in result.stdout
    results = run_python("-m", "aelab.results", "--help")
    assert (
        "table: disentanglement, families, models" in results.stdout
        and "model:" not in results.stdout
    )


def test_wrong_option_lists_the_valid_ones(refusal, tmp_path):
    stderr = refusal("model=transformer", output_dir=tmp_path)
    assert "Could not find 'model/transformer'" in stderr
    assert "Available options in 'model':" in stderr and "deep_ae" in stderr


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--help"]])
def test_cfg_and_help_do_not_import_torch(flags):
    code = (
        f"import sys; sys.argv = ['train.py', *{flags!r}]; "
        "from aelab.train import main; main(); "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert "_target_: aelab.models.VAE" in result.stdout


@pytest.mark.parametrize("module", ["train", "eval", "generate", "export"])
def test_a_wrong_checkpoint_file_is_refused_before_torch_is_imported(module, tmp_path):
    """At once, not after the seconds that importing torch and Lightning take."""
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    argv = ["x", f"ckpt_path={text}", f"hydra.run.dir={tmp_path / 'out'}"]
    code = (
        f"import sys; sys.argv = {argv!r}; from aelab.{module} import main\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert stop.code == 1, stop.code\n"
        "assert 'torch' not in sys.modules, 'torch imported first'"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not a checkpoint (a checkpoint is the zip archive" in result.stderr


def test_importing_the_package_has_no_side_effects():
    code = (
        "import os, sys; before = dict(os.environ); import aelab, aelab.train, aelab.eval, "
        "aelab.generate, aelab.config; assert dict(os.environ) == before; "
        "assert 'torch' not in sys.modules"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


def test_the_cache_is_one_per_user_whatever_folder_a_run_starts_in(
    compose_cfg, monkeypatch, tmp_path
):
    monkeypatch.delenv("AELAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.chdir(tmp_path)
    assert compose_cfg().paths.cache_dir == str(tmp_path / "user-cache" / "aelab")
    monkeypatch.setenv("AELAB_CACHE_DIR", "relative/cache")
    cfg = compose_cfg("paths.output_dir=x")
    absolute_paths(cfg)  # what train.py saves in the run's config.yaml
    assert cfg.paths.cache_dir == str(tmp_path / "relative" / "cache")


def test_the_eval_protocols_set_the_sample_counts_that_a_direct_override_still_beats():
    from hydra import compose, initialize_config_dir

    from aelab.config import prepare_hydra

    prepare_hydra()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cpu = compose("eval", overrides=["ckpt_path=x"])
        paper = compose("eval", overrides=["ckpt_path=x", "protocol=paper"])
        own = compose("eval", overrides=["ckpt_path=x", "protocol=paper", "iw_samples=7"])
    assert (cpu.protocol.name, cpu.iw_samples, cpu.sample_metrics.count) == ("cpu", 1000, 5000)
    assert (paper.iw_samples, paper.sample_metrics.count) == (5000, 10000)
    assert (own.iw_samples, own.sample_metrics.count) == (7, 10000)


def test_the_readme_configuration_table_lists_every_option_of_each_group():
    """The README's `| group | options |` table against the config folders: a group whose YAMLs
    are all choices is listed whole; callbacks and launchers (Hydra's own among them) at least
    name only options that exist."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| group | options") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        group, options = line.split(" | ")[:2]
        rows[group.strip("| `")] = set(re.findall(r"`([\w/]+)`", options))
    assert {"model", "net", "data", "trainer", "logger", "experiment"} <= set(rows)
    own_launchers = {p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")}
    for group, listed in rows.items():
        options = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
        if group == "hydra/launcher":
            assert own_launchers <= listed <= own_launchers | {"basic", "submitit_local"}
        elif group == "callbacks":
            assert listed <= options, group
        else:
            assert listed == options, (group, options - listed, listed - options)
