"""One recipe per phase, each a short explicit loop over the Pipeline's operations."""

from spct.recipes.rft import run_rft
from spct.recipes.rl import run_rl
from spct.recipes.warmup import run_warmup

RECIPES = {"warmup": run_warmup, "rft": run_rft, "rl": run_rl}
