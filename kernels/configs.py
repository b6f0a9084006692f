"""Launch configurations of every Triton kernel: the one table the launchers read.

Why one table: a block size picked inside a launcher and unknown to the compile check is the first
thing to fail on a GPU (shared memory over the limit, registers spilled to local memory). The
launchers take their tiles from here only, and the ahead-of-time check (:mod:`ddk_fast.kernels.aot`)
replays every launcher for a GPU target, so a tile added here is compiled for sm_80 and sm_90 in CI
without being listed twice.

Two kinds of launch:
- compiled (a CUDA tensor, interpreter off): the tiles below -- autotuned over the tiles of the launch's
  family in ``MATMUL_TILES`` / ``FFN_UP_TILES`` / ``FFN_DH_TILES`` for the GEMM kernels, one tile per
  (dtype, head size, pass) for attention;
- interpreted (``TRITON_INTERPRET=1``, CPU tensors in the tests): small tiles, because each program
  costs about a millisecond there.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class Tile:
    """Block sizes (the kernel's ``BLOCK_*`` constexprs) with the warps and pipeline stages of a launch."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def of(cls, num_warps: int, num_stages: int, **blocks: int) -> "Tile":
        return cls(tuple(blocks.items()), num_warps, num_stages)

    def meta(self) -> dict[str, int]:
        """The block-size constexprs, e.g. ``{"BLOCK_M": 64, "BLOCK_N": 64}``."""
        return dict(self.blocks)

    def config(self) -> triton.Config:
        """This tile as an autotune candidate."""
        return triton.Config(self.meta(), num_warps=self.num_warps, num_stages=self.num_stages)

    def __str__(self) -> str:
        sizes = "x".join(str(v) for _, v in self.blocks)
        return f"{sizes} w{self.num_warps} s{self.num_stages}"


# ---- the GEMM kernels, autotuned on a GPU over the tiles of their family -----------------------------
# "mma": fp16/bf16 operands, and fp32 with TF32 allowed -- tensor-core dots. "fma": fp32 with exact
# ("ieee") dots, which run on FMA units with both operand tiles in registers: smaller tiles per warp.
# The FFN backward kernel (ffn_dh) keeps five [BLOCK_M, BLOCK_N] fp32 tiles live in its epilogue
# (product, z, grad of h, act, act'), so its 128-wide tiles take 8 warps.
MATMUL_TILES = {
    "mma": (Tile.of(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_R=32),
            Tile.of(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_R=32),
            Tile.of(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_R=32)),
    "fma": (Tile.of(4, 3, BLOCK_M=32, BLOCK_N=64, BLOCK_R=32),
            Tile.of(4, 3, BLOCK_M=64, BLOCK_N=32, BLOCK_R=32)),
}
FFN_UP_TILES = MATMUL_TILES
FFN_DH_TILES = {
    "mma": (Tile.of(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_R=32),
            Tile.of(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_R=32),
            Tile.of(8, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_R=32)),
    "fma": (Tile.of(4, 3, BLOCK_M=32, BLOCK_N=64, BLOCK_R=32),
            Tile.of(4, 3, BLOCK_M=64, BLOCK_N=32, BLOCK_R=32)),
}


def gemm_family(dtype: torch.dtype, input_precision: str) -> str:
    """"fma" for exact fp32 dots, "mma" otherwise (see MATMUL_TILES)."""
    return "fma" if dtype == torch.float32 and input_precision == "ieee" else "mma"


def autotune_candidates(tiles: dict) -> tuple[list, dict]:
    """(every tile of every family as triton.Config, family -> its Configs): the autotuner gets the
    first list and prunes it to the launch's family with :func:`family_pruner`."""
    by_family = {family: [tile.config() for tile in group] for family, group in tiles.items()}
    return [c for group in by_family.values() for c in group], by_family


def family_pruner(by_family: dict, pointer_arg: str):
    """``early_config_prune`` for triton.autotune: keep the tiles of the family the launch belongs to
    (dtype of ``pointer_arg``, the INPUT_PRECISION constexpr)."""
    def prune(configs, named_args, **kwargs):
        family = gemm_family(named_args[pointer_arg].dtype, kwargs.get("INPUT_PRECISION", "ieee"))
        return by_family[family]
    return prune


# Off the GPU (interpreter) the GEMM kernels take this tile unless a caller forces another.
INTERPRETER_GEMM_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_R": 32}

# ---- gated attention (kernels/gated_attention.py): one tile per (inputs, head size, pass) -------------
# Keys: operand class ("16-bit" = fp16/bf16, "fp32", "fp64"), head-size bucket (BLOCK_D = next power of
# two of D, at least 16), pass. Every tile keeps registers under ptxas's 255 per thread with no spills
# and shared memory under the A100's 163 KiB on sm_80 and sm_90 (kernels/aot.py checks it; the numbers
# are in docs/gpu_aot.md). fp32 runs "ieee" dots on FMA units, whose operands live in registers: hence
# the small tiles; float64 takes 8-byte registers. The backward's delta kernel takes the backward
# tile's BLOCK_M and warps.
ATTENTION_TILES = {
    ("16-bit", "D<=64", "fwd"): Tile.of(8, 3, BLOCK_M=128, BLOCK_N=64),
    ("16-bit", "D<=64", "bwd"): Tile.of(8, 2, BLOCK_M=64, BLOCK_N=64),
    ("16-bit", "D<=128", "fwd"): Tile.of(8, 2, BLOCK_M=64, BLOCK_N=64),
    ("16-bit", "D<=128", "bwd"): Tile.of(8, 2, BLOCK_M=32, BLOCK_N=64),
    ("16-bit", "D<=256", "fwd"): Tile.of(8, 2, BLOCK_M=64, BLOCK_N=32),
    ("16-bit", "D<=256", "bwd"): Tile.of(8, 2, BLOCK_M=32, BLOCK_N=32),
    ("fp32", "D<=64", "fwd"): Tile.of(4, 2, BLOCK_M=32, BLOCK_N=32),
    ("fp32", "D<=64", "bwd"): Tile.of(8, 2, BLOCK_M=32, BLOCK_N=32),
    ("fp32", "D<=128", "fwd"): Tile.of(8, 2, BLOCK_M=16, BLOCK_N=32),
    ("fp32", "D<=128", "bwd"): Tile.of(8, 2, BLOCK_M=16, BLOCK_N=16),
    ("fp32", "D<=256", "fwd"): Tile.of(8, 2, BLOCK_M=32, BLOCK_N=32),
    ("fp32", "D<=256", "bwd"): Tile.of(8, 2, BLOCK_M=16, BLOCK_N=16),
    ("fp64", "D<=64", "fwd"): Tile.of(4, 1, BLOCK_M=32, BLOCK_N=32),
    ("fp64", "D<=64", "bwd"): Tile.of(4, 1, BLOCK_M=16, BLOCK_N=32),
    ("fp64", "D<=128", "fwd"): Tile.of(8, 1, BLOCK_M=16, BLOCK_N=32),
    ("fp64", "D<=128", "bwd"): Tile.of(8, 1, BLOCK_M=16, BLOCK_N=16),
    ("fp64", "D<=256", "fwd"): Tile.of(8, 1, BLOCK_M=16, BLOCK_N=16),
    ("fp64", "D<=256", "bwd"): Tile.of(8, 1, BLOCK_M=16, BLOCK_N=16),
}
INTERPRETER_ATTENTION_TILE = Tile.of(1, 1, BLOCK_M=16, BLOCK_N=16)
ATTENTION_HEAD_BUCKETS = (64, 128, 256)  # the largest head size, MAX_HEAD_DIM in kernels/gated_attention.py


def attention_tile_key(head_dim: int, dtype: torch.dtype, backward: bool) -> tuple[str, str, str]:
    """The ``ATTENTION_TILES`` key of a launch."""
    operands = {torch.float64: "fp64", torch.float32: "fp32"}.get(dtype, "16-bit")
    bucket = next((b for b in ATTENTION_HEAD_BUCKETS if head_dim <= b), ATTENTION_HEAD_BUCKETS[-1])
    return (operands, f"D<={bucket}", "bwd" if backward else "fwd")


def attention_tile(head_dim: int, dtype: torch.dtype, backward: bool, device: torch.device) -> Tile:
    """The tile of one attention launch on ``device`` (the interpreter's small tile off the GPU)."""
    if not compiled_launch(device):
        return INTERPRETER_ATTENTION_TILE
    return ATTENTION_TILES[attention_tile_key(head_dim, dtype, backward)]


# ---- which kind of launch ----------------------------------------------------------------------------
_REPLAY_FOR_GPU = contextvars.ContextVar("ddk_fast_replay_for_gpu", default=False)


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors in the Triton interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def compiled_launch(device: torch.device) -> bool:
    """True when a launch on ``device`` runs a kernel compiled for a GPU: a CUDA tensor with the
    interpreter off, or any tensor while :func:`replaying_for_gpu` is active."""
    if _REPLAY_FOR_GPU.get():
        return True
    return torch.device(device).type == "cuda" and not interpreting()


@contextlib.contextmanager
def replaying_for_gpu():
    """Make the launchers choose exactly what they would choose on a GPU, for CPU tensors.

    Only the ahead-of-time compile check uses this, with kernel launches intercepted: the arguments
    and constexprs a GPU launch would pass are recorded and compiled for a GPU target, nothing runs.
    """
    token = _REPLAY_FOR_GPU.set(True)
    try:
        yield
    finally:
        _REPLAY_FOR_GPU.reset(token)
