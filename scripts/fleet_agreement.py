"""Where does a trained fleet policy decide differently from congestion DPP? Roll congestion DPP on the
fleet evaluation's episodes (the same keys as `python -m splitrl.evaluation.fleet`); at every visited
device-state also take the trained policy's greedy boundary, and print how often they agree and how often
each keeps layers on the edge, by device type and published wait. docs/fleet.md shows a run.

    PYTHONPATH=. .venv/bin/python scripts/fleet_agreement.py --runs outputs/train/hppo/<run> --kappa 1000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.baselines.trained import Trained
from splitrl.env import rollout as R
from splitrl.env.fleet import start
from splitrl.env.fleet_scenario import make_fleet_with_info
from splitrl.evaluation import fleet as FE

WAIT_BINS = (0.0, 0.5, 2.0, 5.0, 10.0, 30.0, np.inf)   # published wait (s)


def compare(env, params, info, fleet: str, kappa: float, run: str, seeds: int, episodes: int, steps: int) -> dict:
    cong = FE.make_policy("congestion_dpp", params=params, congestion=kappa)
    trained = Trained.from_run_dir(run)
    cpp, tpp = (FE.init_per_device(p, env, params, "layer", info) for p in (cong, trained))
    per_c, per_t = (jax.vmap(p, (0, 0, 0, 0, 0, None)) for p in (cong, trained))

    @jax.jit
    def episodes_of(env_keys, policy_keys):
        reset_keys, env_roots = jax.vmap(jax.random.split)(env_keys).transpose(1, 0, 2)
        fold = jax.vmap(jax.random.fold_in, (0, None))

        def act(obs, state, pol_keys, _env_keys):    # congestion DPP acts; the trained policy is only asked
            def one(k, o, s):
                ks = jax.random.split(k, env.n_devices)
                return (per_c(cpp, ks, o, s.device, params.device, None),
                        per_t(tpp, ks, o, s.device, params.device, None).boundary)
            return jax.vmap(one)(pol_keys, obs, state)

        def record(s):
            return {"dpp": s.action.boundary, "trained": s.aux, "wait": s.state.device.cloud_wait_est}
        return R.rollout(env, params, act, start(env, params, reset_keys), jnp.arange(steps),
                         lambda t: (fold(policy_keys, t), fold(env_roots, t)), record, auto_reset=False)[1]

    outs = [jax.device_get(episodes_of(*FE.episode_keys(fleet, s, episodes))) for s in range(seeds)]
    cat = {k: np.concatenate([o[k].ravel() for o in outs]) for k in ("dpp", "trained", "wait")}
    cat["kind"] = np.concatenate([np.broadcast_to(info.device_type, o["dpp"].shape).ravel() for o in outs])
    return cat


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", default="llama-2-7b_1xa100_peak")
    ap.add_argument("--runs", nargs="+", required=True, help="splitrl-train fleet run directories")
    ap.add_argument("--kappa", type=float, default=1000.0, help="congestion DPP's multiplier")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args(argv)
    env, params, info = make_fleet_with_info(a.fleet)
    names = [d.id for d in info.devices]
    for run in a.runs:
        c = compare(env, params, info, FE.fleet_name(a.fleet), a.kappa, run, a.seeds, a.episodes, a.steps)
        print(f"{run}: agrees with congestion DPP (κ = {a.kappa:g}) on {np.mean(c['dpp'] == c['trained']):.3f} "
              "of device-states")
        for lo, hi in zip(WAIT_BINS[:-1], WAIT_BINS[1:], strict=True):
            for k, name in enumerate(names):
                m = (c["wait"] >= lo) & (c["wait"] < hi) & (c["kind"] == k)
                if m.any():
                    print(f"  wait [{lo:g}, {hi:g}) s  {name:45s} n = {m.sum():6d}  agree {np.mean(c['dpp'][m] == c['trained'][m]):.3f}"
                          f"  layers on the edge: DPP {np.mean(c['dpp'][m] > 0):.3f}, trained {np.mean(c['trained'][m] > 0):.3f}")


if __name__ == "__main__":
    main()
