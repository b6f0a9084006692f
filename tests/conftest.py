"""Test session set-up: Triton kernels run in the interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection time.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)

GLUE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "glue")


@pytest.fixture(scope="session")
def glue_dir():
    """The real GLUE files shipped beside the repository (skips only if the folder is absent)."""
    path = os.environ.get("DDK_FAST_GLUE_DIR", os.path.normpath(GLUE_DIR))
    if not os.path.isdir(path):
        pytest.skip(f"GLUE data folder not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
