import itertools
import os

import pytest
from conftest import run_python, run_train
from hydra.utils import instantiate

from aelab.config import CONFIG_DIR, app_help

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert {"ae", "deep_ae", "vae", "conv_ae", "conv_vae", "beta_vae"} <= set(MODELS)
    assert {"mnist", "fashion", "idx"} <= set(DATA)
    for group, options in {
        "trainer": {"default", "cpu", "gpu"},
        "logger": {"tensorboard", "csv", "none"},
        "debug": {"fast", "overfit"},
    }.items():
        assert options <= {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}


@pytest.mark.parametrize(("model", "data"), list(itertools.product(MODELS, DATA)))
def test_every_model_and_data_compose_and_instantiate(compose_cfg, tmp_path, model, data):
    cfg = compose_cfg(
        f"model={model}", f"data={data}", f"data.path={tmp_path}", output_dir=tmp_path
    )
    assert cfg.data.dataset == data
    assert cfg.model.optimizer._partial_ is True
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    net = instantiate(cfg.model, image_shape=[1, 28, 28], _convert_="all")
    assert net.hparams["image_shape"] == [1, 28, 28]
    assert "optimizer" not in net.hparams
    optimizer = net.configure_optimizers()
    assert optimizer.defaults["lr"] == cfg.model.optimizer.lr
    assert optimizer.defaults["fused"] is True  # one operation per update, also on CPU


def test_model_defaults_match_the_tutorials(compose_cfg):
    vae = compose_cfg("model=vae").model
    assert (vae.hidden_dims, vae.latent_dim, vae.optimizer.lr) == ([400], 20, 1e-3)
    deep = compose_cfg("model=deep_ae").model
    assert (deep.hidden_dims, deep.latent_dim, deep.optimizer.weight_decay) == (
        [128, 64, 12],
        3,
        1e-5,
    )
    ae = compose_cfg("model=ae").model
    assert (ae.hidden_dims, ae.latent_dim, ae.activation) == ([], 128, "relu")
    cfg = compose_cfg()
    assert cfg.data.dataset == "mnist" and cfg.model._target_ == "aelab.models.VAE"
    assert cfg.data.batch_size == 128 and cfg.data.val_size == 5000


def test_trainer_variants_inherit_default(compose_cfg):
    default = compose_cfg().trainer
    assert default.accelerator == "auto"
    for variant, accelerator in [("cpu", "cpu"), ("gpu", "gpu")]:
        trainer = compose_cfg(f"trainer={variant}").trainer
        assert trainer.accelerator == accelerator
        assert trainer.max_epochs == default.max_epochs


def test_paths_follow_environment(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path))
    assert compose_cfg().paths.data_dir == str(tmp_path)
    monkeypatch.delenv("AELAB_DATA_DIR")
    assert compose_cfg().paths.data_dir == os.path.join(str(CONFIG_DIR.parent), "data")


def test_help_lists_groups_and_options():
    result = run_train("--help")
    assert result.returncode == 0
    for line in [
        "model: ae, beta_vae, conv_ae, conv_vae, deep_ae, vae",
        "data: fashion, idx, mnist",
        "logger: csv, none, tensorboard",
        "trainer: cpu, ddp, ddp_cpu, default, gpu",
    ]:
        assert line in result.stdout


def test_wrong_option_lists_the_valid_ones():
    result = run_train("model=transformer")
    assert result.returncode != 0
    assert "Could not find 'model/transformer'" in result.stderr
    assert "Available options in 'model':" in result.stderr and "deep_ae" in result.stderr


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


@pytest.mark.parametrize(
    ("module", "args"),
    [("train", ["--help", "model=ae", "experiment=simple_ae"]), ("eval", ["-h"])],
)
def test_help_is_hydras_own_text(module, args):
    """`--help` is answered without Hydra's slow group listing, with the same text."""
    hydras = (
        f"import sys; from aelab.config import prepare_hydra; from aelab.{module} import "
        f"_hydra_main; prepare_hydra(); sys.argv[1:] = {args!r}; _hydra_main()"
    )
    expected = run_python("-c", hydras)
    ours = run_python("-m", f"aelab.{module}", *args)
    assert ours.returncode == expected.returncode == 0, ours.stderr + expected.stderr
    assert ours.stdout == expected.stdout == app_help(module, args) + "\n"
    assert "== Configuration groups ==" in ours.stdout


def test_help_with_an_unknown_option_is_one_error():
    result = run_train("--help", "model=transformer")
    assert result.returncode == 1
    assert result.stderr.startswith("error: In 'train': Could not find 'model/transformer'")
    assert "Traceback" not in result.stderr
