"""One recipe per phase, each a short explicit loop over the Pipeline's operations."""

from spct.recipes.eval import run_eval
from spct.recipes.meta_rm import run_meta_rm
from spct.recipes.policy import run_policy_rl, run_policy_sft
from spct.recipes.rft import run_rft
from spct.recipes.rl import run_rl
from spct.recipes.warmup import run_warmup

RECIPES = {"warmup": run_warmup, "rft": run_rft, "rl": run_rl, "meta_rm": run_meta_rm, "eval": run_eval,
           "policy_sft": run_policy_sft, "policy_rl": run_policy_rl}
