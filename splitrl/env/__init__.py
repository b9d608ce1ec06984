"""The pure-JAX edge/cloud split-inference environment (gymnax 1.x API)."""

from splitrl.env.scenario import ScenarioError, ScenarioInfo, check_params, make, make_with_info
from splitrl.env.split_env import FEATURES, TX_FORMATS, SplitEnv
from splitrl.env.types import Action, EnvParams, EnvState, Observation

__all__ = ["FEATURES", "TX_FORMATS", "Action", "EnvParams", "EnvState", "Observation", "ScenarioError",
           "ScenarioInfo", "SplitEnv", "check_params", "make", "make_with_info"]
