"""Name -> search class, so configs and the CLI can pick a parametrisation by a string."""
from typing import Sequence

from ddk_fast.search.hard_concrete import HardConcreteSearch
from ddk_fast.search.progressive import ProgressiveSearch
from ddk_fast.search.width import GumbelWidthSearch

SEARCHES = {"gumbel": GumbelWidthSearch, "hard_concrete": HardConcreteSearch, "progressive": ProgressiveSearch}


def build_search(kind: str = "gumbel", num_heads: Sequence[int] = (), intermediate: Sequence[int] = (), **kwargs):
    """``build_search("gumbel" | "hard_concrete" | "progressive", num_heads=[H]*L, intermediate=[I]*L, **kwargs)``;
    ``kwargs`` go to the class (see ``GumbelWidthSearch``, ``HardConcreteSearch``, ``ProgressiveSearch``;
    the last one needs ``cost_model``, ``target`` and ``total_steps``)."""
    if kind not in SEARCHES:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(SEARCHES)}")
    return SEARCHES[kind](num_heads, intermediate, **kwargs)
