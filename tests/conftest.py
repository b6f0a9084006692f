"""Test session set-up: Triton kernels run in the interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection time.
"""
import os

import pytest
import torch
from train_support import packaged_tokenizer

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)

GLUE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "glue")
# the folder every test reads GLUE from (also imported by modules that skip themselves without it)
GLUE_PATH = os.environ.get("DDK_FAST_GLUE_DIR", os.path.normpath(GLUE_DIR))


@pytest.fixture(scope="session")
def glue_dir():
    """The real GLUE files shipped beside the repository (skips only if the folder is absent)."""
    path = GLUE_PATH
    if not os.path.isdir(path):
        pytest.skip(f"GLUE data folder not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    """The packaged MiniLM tokenizer, read once for the session (tests only read it)."""
    return packaged_tokenizer()


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is much faster than two on a loaded 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
