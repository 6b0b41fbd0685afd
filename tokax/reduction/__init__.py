"""Token reduction: the Tokens state, plans, one apply, and the methods built on them.

One way in: `build("tome:16")` / `build(dict(name="evit", keep_rate=0.7))` over the registry
`METHODS` (tokax.reduction.registry); the contract every method follows is tokax.reduction.base.
Imports only jax, flax and numpy, so it can be lifted into any JAX codebase.
"""
from tokax.reduction.base import (BLOCK_PLACEMENTS, PLACEMENTS, EndReduction, Method, MidReduction, PostReducer,
                                  PreReduction)
from tokax.reduction.dct import DCT, dct_compress, dct_plan, dct_token_matrix
from tokax.reduction.divprune import (DivPrune, ToDRE, divprune, divprune_plan, divprune_select, todre, todre_plan,
                                      todre_select)
from tokax.reduction.dtome import (DToMe, DToMeCalibration, ThresholdState, batch_level_plan, calibrate_dtome,
                                   calibrate_thresholds, r_schedule, threshold_plan)
from tokax.reduction.evit import EViT, cls_select, cls_select_plan, evit_num_keep, evit_plan
from tokax.reduction.fastervlm import FasterVLM
from tokax.reduction.mctf import MCTF
from tokax.reduction.pitome import PiToMe, energy_scores, pitome_plan
from tokax.reduction.random_select import RandomSelect, random_scores
from tokax.reduction.registry import METHODS, build
from tokax.reduction.schedule import parse_r, token_counts
from tokax.reduction.slim import ReverseSlim, Slim, TokenSlimming, apply_slim, slim_plan, slim_weights
from tokax.reduction.tokens import (DensePlan, MergePlan, Plan, SelectPlan, Tokens, apply_plan, plan_matrix,
                                    soft_sizes, source_matrix)
from tokax.reduction.tome import ToMe, bipartite_matching_plan

__all__ = [
    "METHODS", "build",
    "BLOCK_PLACEMENTS", "EndReduction", "Method", "MidReduction", "PostReducer", "PreReduction",
    "DToMe", "DToMeCalibration", "ThresholdState", "batch_level_plan", "calibrate_dtome", "calibrate_thresholds",
    "r_schedule", "threshold_plan",
    "FasterVLM", "MCTF",
    "ReverseSlim", "Slim", "TokenSlimming", "apply_slim", "slim_plan", "slim_weights", "soft_sizes",
    "PiToMe", "energy_scores", "pitome_plan",
    "RandomSelect", "random_scores",
    "DCT", "dct_compress", "dct_plan", "dct_token_matrix", "DivPrune", "ToDRE", "divprune", "divprune_plan",
    "divprune_select", "todre", "todre_plan", "todre_select",
    "EViT", "PLACEMENTS", "cls_select", "cls_select_plan", "evit_num_keep", "evit_plan",
    "DensePlan", "MergePlan", "Plan", "SelectPlan", "ToMe", "Tokens", "apply_plan",
    "bipartite_matching_plan", "parse_r", "plan_matrix", "source_matrix", "token_counts",
]
