"""Shared fixtures of both tiers (tests/unit/, tests/integration/): tiny models built from configs, real data from
scikit-learn, quiet logging."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from transformers import ResNetConfig, ResNetForImageClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import trgl_hf  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
# Tiny tensors: one thread avoids OpenMP contention when other processes share the 2 cores.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`../shared/data` beside the repository (or `$TRGL_SHARED_DATA`), when present."""
    candidate = Path(os.environ.get("TRGL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return candidate if candidate.is_dir() else None


def tiny_hf_resnet(num_labels: int = 3, depths=(2, 2), seed: int = 0) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16][: len(depths)],
        depths=list(depths),
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(config)


def tiny_cifar_resnet(num_labels: int = 10, num_channels: int = 1, depths=(1, 1, 1), seed: int = 0):
    torch.manual_seed(seed)
    config = trgl_hf.CifarResNetConfig(
        num_channels=num_channels,
        depths=list(depths),
        hidden_sizes=[4, 8, 8],
        embedding_size=4,
        num_labels=num_labels,
        image_size=8,
    )
    return trgl_hf.CifarResNetForImageClassification(config)


@pytest.fixture
def make_hf_resnet():
    return tiny_hf_resnet


@pytest.fixture
def make_cifar_resnet():
    return tiny_cifar_resnet


@pytest.fixture
def hf_resnet():
    return tiny_hf_resnet()


@pytest.fixture
def cifar_resnet():
    return tiny_cifar_resnet()


@pytest.fixture(scope="session")
def digits():
    return trgl_hf.load_digits_dataset()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])


@contextlib.contextmanager
def memory_capped_group(limit: int):
    """As root: a child of this process's cgroup v1 memory group limited to `limit` bytes (memory and swap), removed
    afterwards; yields its folder (write a pid to `cgroup.procs` to put a process in it). Skips where cgroup v1
    memory cannot be written."""
    from trgl_hf.training import memory_limits

    memberships = dict(memory_limits.cgroup_memberships("/proc"))
    parent = None
    if os.geteuid() == 0 and 1 in memberships:
        parent = memory_limits.group_directory(Path("/sys/fs/cgroup/memory"), memberships[1])
    if parent is None or not os.access(parent, os.W_OK) or not (parent / "memory.limit_in_bytes").exists():
        pytest.skip("cgroup v1 memory is not writable here (needs root and /sys/fs/cgroup/memory)")
    group = parent / f"trgl-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
    except OSError as error:
        pytest.skip(f"cannot make a limited cgroup v1 memory group: {error}")
    try:
        yield group
    finally:
        for _ in range(50):  # the group can be removed once its last process is gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def memory_cap():
    """`memory_capped_group`: `with memory_cap(limit) as group:`."""
    return memory_capped_group


@pytest.fixture(autouse=True)
def one_multiprocess_test_at_a_time(request, tmp_path_factory):
    """Under `pytest -n 2` (CI), a test marked `multiprocess` holds a lock that the test workers share (a file beside
    their temporary folders), so that two multi-process runs never compete for the two cores at once."""
    if request.node.get_closest_marker("multiprocess") is None or "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    with open(tmp_path_factory.getbasetemp().parent / "multiprocess.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
