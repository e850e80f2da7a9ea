"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decoded-dataset caches go to a temporary folder, never the user's ~/.cache."""
    import os

    old = os.environ.get("SOFTLABELS_CACHE")
    os.environ["SOFTLABELS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SOFTLABELS_CACHE", None)
    else:
        os.environ["SOFTLABELS_CACHE"] = old


@pytest.fixture(autouse=True)
def _restore_threads():
    """Runs with ``train.threads`` change torch's process-wide thread count; undo it per test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny-tensor tests: with two threads per process
    they run several times slower when the 2 cores are shared. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
