"""Baselines and the oracle: they run jitted + vmapped everywhere, the oracle is exact per slot, the
SplitLLM DP equals brute force, Chen et al.'s pieces train, trained checkpoints load."""

import dataclasses
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from splitrl.agents.networks import FlatPolicy, HierarchicalPolicy
from splitrl.baselines import BASELINES, Trained, make_baseline, splitllm
from splitrl.baselines.chen import ChenPPO, train_chen
from splitrl.baselines.dpp import Oracle
from splitrl.baselines.splitllm import SplitLLMDP
from splitrl.env import Action, make
from splitrl.env.chen import interior_splits
from splitrl.env.dpp import candidate_actions, dpp_objective
from splitrl.env.scenario import SCENARIO_DIR, load_scenario_dict
from splitrl.env.types import Conditions
from splitrl.evaluation.run import scenario_spec
from splitrl.training.rundir import write_final_params

from .conftest import CONF

# One scenario per distinct thing a baseline reads, not every shipped file: each env shape costs a compile
# of every baseline. The measured tables (default), an analytic 16-unit model with masked splits and units
# (the LLaMA-2-7B group: its Galaxy S23 and chen_noise_fading cannot hold the model, one compile for four),
# the regime channel (outage_*), and the env's optional sections that change the step and the DPP
# objective (heat, sessions, battery; on the trace channel). Left out, as copies of these for a baseline:
# the GPT-2-XL and LLaMA-2-13B splitwise groups (other table rows of the same analytic model, masks as
# above), trace_4g_bus (the trace channel of heat/session) and the held-out edits. tests/test_env.py and
# tests/test_env_golden.py build and step every shipped file; `bash scripts/compare` runs every baseline on them.
SCENARIOS = ["battery_s23_outages", "chen_noise_fading", "default", "heat_s23_3g_bus", "outage_heavy", "outage_long",
             "session_s23_3g_bus", "splitwise_llama-2-7b_galaxy-s23", "splitwise_llama-2-7b_jetson-orin-nx-16gb",
             "splitwise_llama-2-7b_raspberry-pi-5"]
CAUSAL = [n for n in BASELINES if n not in ("oracle_dpp", "mpc_oracle")]
ONE_SLOT = [n for n in BASELINES if n != "mpc_oracle"]   # called with one slot's key (the MPC oracle reads several)


# ----------------------------------------------------------------------------- test-only references
def all_actions(env, env_params) -> Action:
    """Every allowed (b, fmt, unit subset): 2^U per boundary. For tests (exactness of the above)."""
    c = env_params.costs
    U = env.n_units
    bmask, umask = np.asarray(c.boundary_mask), np.asarray(c.unit_mask)
    subsets = ((np.arange(2**U)[:, None] >> np.arange(U)) & 1).astype(np.int32)
    rows = [(b, f, s) for b in np.flatnonzero(bmask) for f in range(env.num_formats) for s in subsets
            if not (s.astype(bool) & ~umask[b]).any()]
    return Action(boundary=jnp.asarray([r[0] for r in rows], jnp.int32), fmt=jnp.asarray([r[1] for r in rows], jnp.int32),
                  units=jnp.asarray(np.stack([r[2] for r in rows]), jnp.int32))


def oracle_objectives(env, env_params, state, step_key, actions: Action) -> jax.Array:
    return Oracle(env=env).objectives(actions, state, env_params, step_key)


def _bound(env, params, spec):
    """Every baseline bound to the scenario with its test-sized parameters (Chen: untrained actor)."""
    pols, pps = [], []
    for name in ONE_SLOT:
        kw = {"n_bins": 2, "n_buckets": 16} if name == "splitllm_dp" else {}
        p = make_baseline(name, **kw).bind(env, params)
        if isinstance(p, ChenPPO):
            lo, hi = interior_splits(params, env.n_layers)
            actor = FlatPolicy(3, (64, 64), "separate").init(jax.random.PRNGKey(0), jnp.zeros(3))
            pp = {"actor": actor, "lo": jnp.int32(lo), "hi": jnp.int32(hi), "surrogate_rmse": jnp.float32(0),
                  "surrogate_target_std": jnp.float32(0)}
        else:
            pp = p.init(env, params, spec, jax.random.PRNGKey(0))
        pols.append(p)
        pps.append(pp)
    return tuple(pols), tuple(pps)


@partial(jax.jit, static_argnames=("env", "policies"))
def _act_and_step(env, policies, params, pps, keys):
    """Every policy's action, then one env step with it, from reset states: vmapped over the scenarios
    of one shape (params) and over keys; one compile per shape. Returns (actions, info) with leading
    axes [policies, scenarios, keys]."""
    def one(prm, pp_all, key):
        k_reset, k_pol, k_step = jax.random.split(key, 3)
        obs, state = env.reset_env(k_reset, prm)
        acts = [p(pp, k_pol, obs, state, prm, k_step) for p, pp in zip(policies, pp_all, strict=True)]
        acts = jax.tree.map(lambda *a: jnp.stack(a), *acts)
        info = jax.vmap(lambda a: env.step_env(k_step, state, a, prm)[4])(acts)
        return acts, info
    out = jax.vmap(lambda prm, pp: jax.vmap(lambda k: one(prm, pp, k))(keys))(params, pps)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 2, 0), out)


def test_every_baseline_runs_jitted_and_vmapped_on_every_kind_of_scenario():
    """Scenarios of one env shape share one compile (params are vmapped data); every baseline acts
    from reset states and the env steps with its action, all finite and feasible-shaped, on each kind
    of scenario (SCENARIOS). (Whole episodes of every baseline run in tests/test_evaluate.py and the
    oracle test.)"""
    assert set(SCENARIOS) <= {p.stem for p in SCENARIO_DIR.glob("*.yaml")}   # a renamed file is not skipped
    groups: dict = {}
    for name in SCENARIOS:
        env, params, spec = scenario_spec(name)
        pols, pps = _bound(env, params, spec)
        # stacked along a scenario axis: params must match leaf by leaf (traces differ in length)
        shapes = tuple(np.shape(x) for x in jax.tree.leaves((params, pps)))
        groups.setdefault((env, pols, shapes), []).append((name, params, pps))
    assert sum(len(g) for g in groups.values()) == len(SCENARIOS)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    for (env, pols, _), members in groups.items():
        acts, info = _act_and_step(env, pols, stack([m[1] for m in members]), stack([m[2] for m in members]), keys)
        names = [m[0] for m in members]
        for k in ("latency", "energy", "delta_ppl", "objective", "backlog"):
            assert np.isfinite(np.asarray(info[k])).all(), f"{k} not finite in {names}"
        assert (np.asarray(info["latency"]) > 0).all()
        b = np.asarray(acts.boundary)
        assert b.shape == (len(pols), len(members), 2) and (b >= 0).all() and (b <= env.n_layers).all()
        assert np.isin(np.asarray(acts.units), (0, 1)).all()


@pytest.fixture(scope="module")
def default():
    return scenario_spec("default")


def _states(env, params, n=6, seed=0):
    """n (state, step key) pairs after a few random slots."""
    from splitrl.bench.env import random_split_action
    key = jax.random.PRNGKey(seed)
    obs, state = env.reset_env(key, params)
    out = []
    for t in range(n):
        k_a, k_s = jax.random.split(jax.random.fold_in(key, t + 1))
        out.append((obs, state, k_s))
        obs, state, *_ = env.step_env(k_s, state, random_split_action(env, k_a, obs), params)
    return out


@partial(jax.jit, static_argnames=("policies",))
def _all_actions_at(policies, pps, obs, state, params, step_key):
    """Every policy's action in one state (one compile for all of them): Action with leading axis P."""
    acts = [p(pp, jax.random.PRNGKey(5), obs, state, params, step_key) for p, pp in zip(policies, pps, strict=True)]
    return jax.tree.map(lambda *a: jnp.stack(a), *acts)


def test_oracle_is_never_worse_than_any_policy_from_the_same_state_and_key(default):
    env, params, spec = default
    pols, pps = _bound(env, params, spec)
    objectives = jax.jit(oracle_objectives, static_argnums=0)
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    rand = Action(boundary=jax.random.randint(k[0], (40,), 0, env.num_boundaries),
                  fmt=jax.random.randint(k[1], (40,), 0, 3), units=jax.random.randint(k[2], (40, env.n_units), 0, 2))
    for obs, state, step_key in _states(env, params, 3):
        acts = _all_actions_at(pols, pps, obs, state, params, step_key)
        batch = jax.tree.map(lambda a, r: jnp.concatenate([a, r]), acts, rand)
        objs = np.asarray(objectives(env, params, state, step_key, batch))
        oracle = objs[ONE_SLOT.index("oracle_dpp")]
        assert oracle <= objs.min() + 1e-6 * max(1.0, abs(objs.min()))


def test_oracle_candidates_are_exact_over_all_unit_subsets(default):
    """Default (measured table: units differ): the candidates are every subset; an analytic scenario
    with 16 units: count-canonical placements reach the minimum over all 2^16 subsets."""
    env, params, _ = default
    cands = candidate_actions(env, params)
    assert cands.boundary.shape[0] == 1 + env.n_layers * 3 * 2**env.n_units - 2   # every subset, every split
    have = {(int(b), int(f), tuple(np.asarray(u))) for b, f, u in zip(cands.boundary, cands.fmt, cands.units, strict=True)}
    full = all_actions(env, params)
    assert all((int(b), int(f), tuple(np.asarray(u))) in have or (b == 0 and not u.any()) or b == env.n_layers
               for b, f, u in zip(full.boundary, full.fmt, full.units, strict=True))
    objectives = jax.jit(oracle_objectives, static_argnums=0)
    env2, params2 = make("splitwise_llama-2-7b_galaxy-s23")
    canon = candidate_actions(env2, params2)
    subsets = jnp.asarray(((np.arange(2**env2.n_units)[:, None] >> np.arange(env2.n_units)) & 1), jnp.int32)
    for (_, state, step_key), b in zip(_states(env2, params2, 1), (12,), strict=True):
        full = Action(boundary=jnp.full(subsets.shape[0], b, jnp.int32), fmt=jnp.full(subsets.shape[0], 1, jnp.int32),
                      units=subsets)
        sel = (np.asarray(canon.boundary) == b) & (np.asarray(canon.fmt) == 1)
        mine = jax.tree.map(lambda x, sel=sel: x[sel], canon)
        best_canon = float(objectives(env2, params2, state, step_key, mine).min())
        best_full = float(objectives(env2, params2, state, step_key, full).min())
        assert best_canon == pytest.approx(best_full, rel=1e-6, abs=1e-7)


def test_dpp_objective_is_the_envs(default):
    """The DPP baselines' one-slot objective is the env's: from the env's own metrics it gives the env's
    objective, and with the retransmissions at their expectation (no loss) the priced metrics agree too."""
    from splitrl.env.cost import action_cost
    env, params, _ = default
    lossless = params.replace(channel=params.channel.replace(h_th=jnp.float32(0.0)))
    for _obs, state, step_key in _states(env, lossless, 3):
        a = Action(boundary=jnp.int32(7), fmt=jnp.int32(1), units=jnp.array([1, 0, 1, 1, 0, 0, 0], jnp.int32))
        _, new, _, _, info = env.step_env(step_key, state, a, lossless)
        metrics = {k: info[k] for k in ("latency", "energy", "delta_ppl")} | {"failed": (info["failed"] > 0) * 1.0,
                                                                              "cloud_prefill_s": info["cloud_s"],
                                                                              "cloud_decode_s": 0.0}
        assert float(dpp_objective(lossless, state, metrics, info["arrivals"])) == pytest.approx(
            float(info["objective"]), rel=1e-6)
        cond = Conditions(bw=new.bw, rtt=new.rtt, loss_p=new.loss_p, snr_db=new.snr_db, cloud_load=new.cloud_load,
                          cloud_wait=info["cloud_wait"], connected=new.connected,
                          reconnect=lossless.channel.reconnect_s * (1.0 - state.connected) * new.connected)
        m = action_cost(lossless, a.boundary, a.fmt, a.units, state.prompt_len, state.output_len, cond)
        assert float(m["latency"]) == pytest.approx(float(info["latency"]), rel=1e-5)
        assert float(dpp_objective(lossless, state, m, info["arrivals"])) == pytest.approx(float(info["objective"]),
                                                                                         rel=1e-5)


# ----------------------------------------------------------------------------- SplitLLM DP
def _small_problem(rng, L=3, U=2, sla=1.0, budget=1.0):
    return splitllm.LayerProblem(
        edge_s=np.cumsum(rng.uniform(0.05, 0.3, (L, U + 1)) * (np.arange(U + 1) > 0), 1),
        cloud_s=np.cumsum(rng.uniform(0.01, 0.1, (L, U + 1))[:, ::-1] * (np.arange(U + 1) < U)[::-1], 1)[:, ::-1],
        mem=np.cumsum(rng.uniform(0.05, 0.3, (L, U + 1)) * (np.arange(U + 1) > 0), 1),
        x_hidden=rng.uniform(0.02, 0.3), x_ids=0.01, x_tokens=rng.uniform(0.0, 0.2), x_stream=0.01,
        head_edge_s=rng.uniform(0, 0.2), head_cloud_s=0.01, head_mem=rng.uniform(0, 0.2), mem_budget=budget, sla_s=sla)


@pytest.mark.parametrize("seed", range(12))
def test_splitllm_dp_matches_brute_force(seed):
    """A few-layer model (3-4 layers, 2-3 units) with random costs: the DP's least cloud compute under
    the SLA and memory equals brute force over all (U+1)^L allocations (bucketed model); with an
    unmeetable SLA, both pick the least latency."""
    rng = np.random.default_rng(seed)
    L, U = 3 + seed % 2, 2 + seed % 3 // 2
    p = _small_problem(rng, L, U, sla=rng.uniform(0.2, 1.5) if seed % 4 else 0.05, budget=rng.uniform(0.3, 1.5))
    bk = splitllm.make_buckets(p, 20, 20)
    alloc, cloud, met = splitllm.solve(p, bk)
    evals = [(a, *splitllm.evaluate(p, bk, a)) for a in itertools.product(range(U + 1), repeat=L)]
    fits = [(a, c, t, m) for a, c, t, m in evals if m <= bk.n_mem]
    ok = [(a, c, t) for a, c, t, _ in fits if t <= bk.sla]
    assert met == bool(ok)
    if alloc is None:   # nothing fits memory within lat_range x SLA
        assert not [f for f in fits if f[2] <= bk.n_lat]
        return
    c_dp, t_dp, m_dp = splitllm.evaluate(p, bk, alloc)
    assert m_dp <= bk.n_mem and c_dp == pytest.approx(cloud)
    if ok:
        assert t_dp <= bk.sla and cloud == pytest.approx(min(c for _, c, _ in ok))
    else:
        assert t_dp == min(t for _, _, t, _ in fits if t <= bk.n_lat)


def test_splitllm_projection_and_policy_on_default(default):
    assert splitllm.project(np.array([2, 2, 1, 0]), 2) == (2, pytest.approx(np.array([1, 0])))
    b, units = splitllm.project(np.array([2, 2, 2]), 2)
    assert b == 3 and not units.any()
    env, params, spec = default
    pol = SplitLLMDP(n_bins=6, n_buckets=32)
    pp = pol.init(env, params, spec)
    assert pp["boundary"].shape == (6,) and pp["units"].shape == (6, env.n_units)
    # more bandwidth never moves the allocation onto the edge when the cloud is the cheaper server
    assert np.all(np.asarray(pp["boundary"]) >= 0)


# ----------------------------------------------------------------------------- Chen et al.
def test_chen_surrogate_learns_the_ppl_table_and_their_ppo_trains(default):
    """The surrogate checked is the one train_chen fits (default records and steps, what the baseline
    uses), from its held-out RMSE; a second, smaller fit would only add a compile."""
    env, params, _ = default
    t = train_chen(env, params, jax.random.PRNGKey(1), total_timesteps=640)
    assert t.surrogate_rmse < 0.5 * t.surrogate_target_std   # in log1p(ΔPPL), held out
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t.actor))
    assert 1 <= t.lo <= t.hi < env.n_layers


# ----------------------------------------------------------------------------- trained checkpoints
def _fake_run(tmp_path, env, params, policy, scenario_id):
    from splitrl.env.flat import FlatSplitEnv
    obs, _ = env.reset_env(jax.random.PRNGKey(0), params)
    if policy == "flat":
        flat = FlatSplitEnv(env, params)
        net, obs = FlatPolicy(flat.num_actions, (16,), "separate"), flat._obs(obs, params)
    else:
        net = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (16,), "separate")
    pp = jax.jit(jax.vmap(lambda k: net.init(k, obs)))(jax.random.split(jax.random.PRNGKey(0), 2))
    write_final_params(tmp_path, pp)
    agent = yaml.safe_load((CONF / "agent" / "hppo.yaml").read_text())
    agent |= {"name": f"x_{policy}", "policy": policy, "env": "split" if policy == "hierarchical" else "split_flat",
              "hidden": [16], "critic": "separate", "guide": "dpp" if policy == "hierarchical" else "none"}
    (tmp_path / "resolved_config.yaml").write_text(yaml.safe_dump({"agent": agent, "scenario": {"id": scenario_id}}))
    return tmp_path


@pytest.mark.parametrize("policy", ["hierarchical", "flat"])
def test_trained_checkpoints_load_and_act(default, tmp_path, policy):
    env, params, spec = default
    run = _fake_run(tmp_path, env, params, policy, spec.info.id)
    t = Trained.from_run_dir(str(run)).bind(env, params)
    pp = t.init(env, params, spec)
    obs, state = env.reset_env(jax.random.PRNGKey(0), params)
    a = jax.jit(t, static_argnums=())(pp, jax.random.PRNGKey(0), obs, state, params, jax.random.PRNGKey(1))
    assert 0 <= int(a.boundary) <= env.n_layers and a.units.shape == (env.n_units,)
    other = spec._replace(info=dataclasses.replace(spec.info, id="other-v1"))
    with pytest.raises(ValueError, match="trained on scenario"):
        t.init(env, params, other)


def test_unknown_baseline_lists_the_known_ones():
    with pytest.raises(ValueError, match="known"):
        make_baseline("neurosurgeon")
    assert load_scenario_dict("default")[0]["id"] == "default-v2"


def test_a_run_from_another_observation_contract_names_the_cause(default, tmp_path):
    """A run trained before a feature was added does not load as garbage: the error names the
    parameter, both shapes and the contract."""
    env, params, spec = default
    run = _fake_run(tmp_path, env, params, "hierarchical", spec.info.id)
    obs, _ = env.reset_env(jax.random.PRNGKey(0), params)
    old = obs.replace(features=obs.features[:-1])          # one feature fewer than today's contract
    net = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (16,), "separate")
    write_final_params(run, jax.jit(jax.vmap(lambda k: net.init(k, old)))(jax.random.split(jax.random.PRNGKey(0), 2)))
    with pytest.raises(Exception, match=rf"has shape \({env.obs_dim - 1}, 16\).*observation contract.*"
                                        rf"{env.obs_dim} features"):
        Trained.from_run_dir(str(run)).bind(env, params).init(env, params, spec)


# ----------------------------------------------------------------------------- the MPC oracle
def test_the_mpc_oracle_looks_ahead_with_the_envs_own_keys():
    """With a horizon of 1 it is the one-slot oracle over its candidate set; with 2 it minimises the
    two-slot objective the env really charges (stepped with the evaluation's keys of slots t and t + 1)."""
    from splitrl.baselines import make_baseline
    from splitrl.env.dpp import pick
    from splitrl.evaluation.run import episode_keys, rollout
    env, params = make("session_s23_3g_bus")
    ek, pk = episode_keys("session_s23_3g_bus", 0, 1)
    step = jax.jit(env.step_env)   # the replays: one compile, not 20 sequences' op-by-op eager steps
    for horizon in (1, 2):
        mpc = make_baseline("mpc_oracle", horizon=horizon, width=4).bind(env, params)
        pp = mpc.init(env, params)
        assert pp["sequences"].shape == (4**horizon, horizon) and int(pp["actions"].boundary[0]) == 0
        out = rollout(env, mpc, params, pp, ek, pk, 6)
        assert np.isfinite(np.asarray(out["objective"])).all()
        # replay: from the episode's state at slot 0, every sequence's true cost, with the same keys
        reset_key, root = jax.random.split(ek[0])
        _, state = env.reset_env(reset_key, params)
        keys = [jax.random.fold_in(root, i) for i in range(horizon)]

        def cost(seq, state=state, keys=keys, pp=pp):
            s, total = state, 0.0
            for i, j in enumerate(seq):
                _, s, _, _, info = step(keys[i], s, pick(pp["actions"], j), params)
                total += float(info["objective"])
            return total

        costs = [cost(seq) for seq in np.asarray(pp["sequences"])]
        best = np.asarray(pp["sequences"])[int(np.argmin(costs)), 0]
        assert float(out["boundary"][0, 0]) == float(pp["actions"].boundary[best])
