"""Synthetic IDX datasets in torchvision's layout, so that no test needs the network or real data."""

import gzip
import itertools
import os
import socket
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from aelab.config import CONFIG_DIR, prepare_hydra

if TYPE_CHECKING:
    import lightning as L

REPO = Path(__file__).resolve().parents[1]  # the clone: tests run train.py from here

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
N_TRAIN, N_TEST, VAL_SIZE = 1024, 128, 128


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write an unsigned-byte IDX file (optionally gzipped)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def mnist_source(data_dir, name: str = "mnist"):
    """The source of data=mnist (or data=fashion) under `data_dir`, without system copies."""
    from aelab.data import IdxSource

    folder = {"mnist": "MNIST", "fashion": "FashionMNIST"}[name]
    return IdxSource(str(Path(data_dir) / folder / "raw"), name, download=folder)


def make_images(n: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten blurry class prototypes plus noise: structure that an autoencoder can learn quickly."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((10, (height + 3) // 4, (width + 3) // 4))
    prototypes = np.kron(coarse, np.ones((4, 4)))[:, :height, :width]
    labels = rng.integers(0, 10, n)
    images = prototypes[labels] * 220 + rng.normal(0, 15, (n, height, width))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(
    raw_dir: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, shape=(28, 28), gz=False
) -> dict[str, Path]:
    train_x, train_y = make_images(n_train, *shape, seed=0)
    test_x, test_y = make_images(n_test, *shape, seed=1)
    arrays = {"train_images": train_x, "train_labels": train_y}
    arrays |= {"test_images": test_x, "test_labels": test_y}
    return {k: write_idx(raw_dir / FILES[k], a, gz) for k, a in arrays.items()}


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """What runs cache (the sample metrics' classifiers) goes to a temporary folder, in this
    process and in every `train.py` or `aelab.eval` it starts, never into the clone."""
    import os

    path = tmp_path_factory.mktemp("cache")
    os.environ["AELAB_CACHE_DIR"] = str(path)
    return path


def write_images(folder, n, size=(16, 16), colour=True, seed=0, ext="png"):
    """`n` random images (RGB or grey, PNG, JPEG, ...) in `folder`, for data=folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if colour else size
    for i in range(n):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.{ext}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data_dir holding small synthetic MNIST and FashionMNIST."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("MNIST", "FashionMNIST"):
        write_dataset(root / folder / "raw")
    return root


def small_run_overrides(data_dir: Path) -> list[str]:
    """Overrides for a tiny training run on the synthetic data."""
    return [
        f"paths.data_dir={data_dir}",
        f"data.val_size={VAL_SIZE}",
        "data.batch_size=32",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
    ]


# a model's whole path on the synthetic data in seconds: one epoch of two training batches, one
# validation and one test batch (with small_run_overrides)
TWO_BATCHES = (
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "++trainer.num_sanity_val_steps=0",
    "callbacks.latent_pictures=null",
)


@pytest.fixture
def compose_cfg():
    """Compose the train config the way `python train.py` does (output_dir set explicitly),
    outside a Hydra app: no HydraConfig left by an earlier `aelab.compose` in this process."""
    from hydra.core.hydra_config import HydraConfig

    prepare_hydra()
    HydraConfig.instance().cfg = None

    def _compose(*overrides: str, output_dir: Path | None = None):
        extra = [f"paths.output_dir={output_dir}"] if output_dir else []
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[*overrides, *extra])

    return _compose


@pytest.fixture
def refusal(compose_cfg, monkeypatch):
    """What `python train.py OVERRIDES` prints on stderr when it refuses a config, found
    in-process (no interpreter to start): what does not compose is the CLI's one line
    (aelab.cli.composition_error); what composes goes the CLI's way (aelab.train._hydra_main:
    absolute folders, then `aelab.train.run`: checkpoint files, then `train`, which checks the
    config, builds the data and the model before any step, inside report_user_errors).
    Downloads fail at once, as offline. Returns stderr; fails the test if the config trained."""
    import contextlib
    import io

    import torchvision.datasets
    from hydra.errors import CompactHydraException

    from aelab.cli import composition_error
    from aelab.train import absolute_paths, run

    def offline(*args, **kwargs):
        raise RuntimeError(f"Error downloading: <urlopen error> ({CLOSED_PORT})")

    for name in ("MNIST", "FashionMNIST"):
        monkeypatch.setattr(torchvision.datasets, name, offline)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def _refusal(*overrides: str, output_dir: Path) -> str:
        try:
            cfg = compose_cfg(*overrides, output_dir=output_dir)
        except CompactHydraException as err:
            return composition_error(err) + "\n"
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
            absolute_paths(cfg)
            run(cfg)
        assert stop.value.code == 1
        return stderr.getvalue()

    return _refusal


def assert_one_line(stderr: str, *fragments: str) -> str:
    """`stderr` ends in the one `error:` line, which holds every fragment, and has no traceback:
    how aelab's commands refuse what they cannot do (the config tree may come before it)."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.strip().splitlines()
    (line,) = [line for line in lines if line.startswith("error")]
    assert line == lines[-1], "the error is the last thing printed"
    for fragment in fragments:
        assert fragment in line, line
    return line


CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens here: a download fails at once
# `free_port`'s slices: 2,000 ports per xdist worker from 20000, below Linux's ephemeral range
# (32768-60999; /proc/sys/net/ipv4/ip_local_port_range) for up to 4 workers (pyproject.toml)
PORTS_FROM, PORTS_PER_WORKER = 20000, 2000
_ports = itertools.count()


def run_python(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path = REPO):
    """Run `python ARGS` from the repository root (or `cwd`), as a user would, offline: any
    download goes through a proxy on a closed port and fails at once."""
    import subprocess

    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=offline_env(env),
        timeout=timeout,
    )


def offline_env(env: dict | None = None) -> dict:
    """`env` (default: this process's) for a child process: any download goes through a proxy on
    a closed port and fails at once, and a DDP run it starts meets on a port of this worker's
    own (`free_port`), so that distributed tests can run on several xdist workers at once."""
    proxies = {
        name: CLOSED_PORT for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    }
    base = dict(env or os.environ)
    base.setdefault("MASTER_PORT", str(free_port()))
    return base | proxies


def start_train(*args: str, env: dict | None = None):
    """`python train.py ARGS`, as `start_python` starts it."""
    return start_python("train.py", *args, env=env)


def start_python(*args: str, env: dict | None = None):
    """`python ARGS` started in a session of its own (the test may kill it whole), offline
    as `run_python`; its output goes to a file the test may read."""
    import subprocess
    import tempfile

    output = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process's test)
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=offline_env(env),
        start_new_session=True,
    )
    process.output = output  # read with output_of(process)
    return process


def output_of(process) -> str:
    """What a process of `start_train` printed so far."""
    process.output.seek(0)
    return process.output.read().decode(errors="replace")


def run_train(*args: str, env: dict | None = None, timeout: int = 600):
    """`python train.py ARGS`."""
    return run_python("train.py", *args, env=env, timeout=timeout)


def short_run(compose_cfg, data_dir: Path, tmp_path: Path, *overrides: str):
    """The model, datamodule and Trainer that `train.py` builds (speed-ups included), for a fit
    of a few batches."""
    from hydra.utils import instantiate

    from aelab import speedups
    from aelab.training import instantiate_all, make_trainer

    cfg = compose_cfg(
        *small_run_overrides(data_dir),
        "++trainer.num_sanity_val_steps=0",
        *overrides,
        output_dir=tmp_path,
    )
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.prepare_data()
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape), _convert_="all")
    trainer = make_trainer(cfg, loggers=instantiate_all(cfg.logger))
    if cfg.speedups:
        speedups.apply(trainer, model)
    return model, datamodule, trainer


MLP32 = {"_target_": "aelab.nets.MLP", "hidden_dims": [32]}


def quick_fit(
    model: "L.LightningModule",
    data_dir: Path,
    batch_size: int = 64,
    ckpt_path: Path | None = None,
    **trainer_kwargs,
) -> "L.Trainer":
    """One short epoch on the synthetic MNIST (resumed from `ckpt_path` if given);
    `trainer_kwargs` override the defaults."""
    import lightning as L

    from aelab.data import ImageDataModule

    dm = ImageDataModule(mnist_source(data_dir), batch_size=batch_size, val_size=128)
    defaults = {
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "enable_progress_bar": False,
    }
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        **(defaults | trainer_kwargs),
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders ended with the same weights (last.ckpt) and test metrics, to 1e-6: what
    an exact resume must give."""
    import torch

    def final_state(run_dir: Path) -> tuple[dict, dict]:
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        events = read_events(run_dir / "tensorboard")
        tags = [t for t in events.Tags()["scalars"] if t.startswith("test/")]
        return checkpoint["state_dict"], {t: events.Scalars(t)[-1].value for t in tags}

    weights_a, tests_a = final_state(a)
    weights_b, tests_b = final_state(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.allclose(weights_a[name], weights_b[name], atol=1e-6, rtol=0), name
    assert tests_a.keys() == tests_b.keys() == {"test/loss", "test/recon", "test/kl"}
    for tag in tests_a:
        assert tests_a[tag] == pytest.approx(tests_b[tag], abs=1e-6)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server or a DDP master a test
    starts. Not one the kernel hands out (port 0 draws from its ephemeral range, where another
    test's connection or gloo pair may take it before the server binds it): the next port of
    this xdist worker's own slice below that range, so two workers never hand out the same."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    start = PORTS_FROM + worker * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = start + next(_ports) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{start + PORTS_PER_WORKER - 1}")


def read_events(folder: Path):
    """The TensorBoard events in `folder`, every image kept, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    return events


def pytest_collection_modifyitems(items: list) -> None:
    """The slow tests first: handed out one at a time (`--maxschedchunk 1`), the xdist workers
    then share out the long runs while the many short tests are left to fill the gaps, rather
    than one worker finishing a long run alone at the end. Stable: every worker collects the
    same order, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
