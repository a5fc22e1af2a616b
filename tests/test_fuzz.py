"""Property-based tests (Hypothesis) for the inputs nobody thought of: IDX files of random,
mutated and lying bytes, and wrong values for every documented model and data key. Each
property: one clear error (DataError, ConfigError) or a valid result, never another exception,
a hang or an allocation beyond what the file holds."""

import copy
import functools
import gzip
import os
import resource
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aelab.config import CONFIG_DIR
from aelab.data.idx_reader import read_idx
from aelab.errors import AelabError, DataError, root_cause
from aelab.training import build_datamodule, build_model
from aelab.validation import building, check_config

IDX_CASES = 300  # examples per IDX property in CI (docs/troubleshooting.md)
CONFIG_CASES = 300  # examples of the config property
FUZZ = settings(
    max_examples=IDX_CASES,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def valid_idx(shape=(3, 4, 5)) -> bytes:
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    return (
        struct.pack(">BBBB", 0, 0, 8, len(shape))
        + struct.pack(f">{len(shape)}I", *shape)
        + (array.tobytes())
    )


def read_or_data_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        images = read_idx(path)
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    ndim = data[3]
    assert tuple(images.shape) == struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_are_an_idx_file_or_one_error(tmp_path, data):
    read_or_data_error(tmp_path / "x-idx3-ubyte", data)


@FUZZ
@given(
    cut=st.integers(0, len(valid_idx())),
    flips=st.lists(
        st.tuples(st.integers(0, len(valid_idx()) - 1), st.integers(0, 255)), max_size=4
    ),
    gz=st.booleans(),
)
def test_truncated_and_mutated_files_are_an_idx_file_or_one_error(tmp_path, cut, flips, gz):
    data = bytearray(valid_idx())
    for offset, value in flips:
        data[offset] = value
    data = bytes(data[:cut])
    if gz:
        path = tmp_path / "x-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(data))
        try:
            images = read_idx(path)
            assert images.numel() == len(data) - 4 - 4 * data[3]
        except DataError:
            pass
    else:
        read_or_data_error(tmp_path / "x-idx3-ubyte", data)


@FUZZ
@given(
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
    body=st.integers(0, 4096),
    gz=st.booleans(),
)
def test_a_header_that_lies_allocates_no_more_than_the_file_holds(tmp_path, dims, body, gz):
    """Headers claiming billions of images, and gzip files that inflate past their header's
    promise (a gzip bomb of 64 MB zeros behind a header of a few bytes): one error, and the
    reader's peak memory stays within what it actually read, whatever the header claims."""
    head = struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    payload = bytes(body)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(head + payload) if gz else head + payload)
    tracemalloc.start()
    try:
        read_idx(path)
        assert int(np.prod(dims, dtype=object)) == body
    except DataError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4_000_000 + 4 * body, peak  # a chunk of 1 MB, gzip's buffers, the data


def test_a_gzip_bomb_is_stopped_past_the_headers_promise(tmp_path):
    head = struct.pack(">BBBBI", 0, 0, 8, 1, 10)
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(head + bytes(64 << 20), compresslevel=9))
    tracemalloc.start()
    with pytest.raises(DataError, match="has trailing bytes"):
        read_idx(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000, peak


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "_target_"]), st.integers(), max_size=1),
)


def documented_keys(group: str) -> list[tuple[str, str]]:
    """(option, dotted key) for every scalar or list key the option's config file sets."""
    keys = []
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
        cfg = compose_train(f"{group}={option}")
        node = OmegaConf.to_container(cfg[group])
        for key in flatten(node, group):
            if not key.split(".")[-1].startswith("_") and "data_dir" not in key:
                keys.append((option, key))
    return keys


def flatten(node, prefix: str) -> list[str]:
    if isinstance(node, dict):
        return [k for name, v in node.items() for k in flatten(v, f"{prefix}.{name}")]
    return [prefix]


@functools.cache
def composed(option: str):
    from hydra import compose, initialize_config_dir

    from aelab.config import prepare_hydra

    prepare_hydra()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=["paths.data_dir=/nonexistent", "paths.output_dir=/nonexistent", option],
        )


def compose_train(option: str):
    """The train config with `option` (e.g. `model=vae`), composed once, copied each time."""
    return copy.deepcopy(composed(option))


KEYS = documented_keys("model") + documented_keys("data")


@contextmanager
def address_space_capped(headroom: int = 3 << 30):
    """Allocations past `headroom` more bytes of address space fail (MemoryError, torch's "can't
    allocate") instead of the kernel's OOM killer ending the test worker: IWAE's model.k=10**6
    or a latent_dim of 10**7 is a valid config too large for this machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def out_of_memory(problem: BaseException) -> bool:
    return isinstance(problem, MemoryError) or (
        isinstance(problem, RuntimeError) and "alloc" in str(problem)
    )


def build(cfg) -> None:
    """What training builds before its first step, without data: the model (and a loss on a
    small batch), its optimizer and scheduler, and the datamodule."""
    model = build_model(cfg, [1, 28, 28])
    x = torch.rand(2, 1, 28, 28)
    with building("model"):
        model.loss_terms(x, x)
    model.configure_optimizers()
    build_datamodule(cfg, seed=0)


@settings(
    max_examples=CONFIG_CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=st.sampled_from(KEYS), value=WRONG)
def test_any_value_of_any_documented_key_is_valid_or_one_line(case, value):
    option, key = case
    group = key.split(".")[0]
    cfg = compose_train(f"{group}={option}")
    try:
        OmegaConf.update(cfg, key, value, force_add=True)
    except OmegaConfBaseException:
        assume(False)  # on the command line, Hydra's own one-line "Could not override" error
    try:
        check_config(cfg)
        with address_space_capped():
            build(cfg)
    except Exception as err:  # Hydra's instantiate wraps what the code raised
        problem = root_cause(err)
        assume(not out_of_memory(problem))  # valid, but more than this machine holds
        assert isinstance(problem, AelabError), (key, value, repr(problem))
        assert "\n" not in str(problem) and f"{group}" in str(problem), (key, value, str(problem))
