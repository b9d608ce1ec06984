"""Scale out (docs/scaling.md): training across devices (forced host devices in a subprocess, since
XLA reads its flags once per process), sweeps through a local Ray cluster, an Optuna sweep."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from splitrl.config import ConfigError
from splitrl.training.train import CONF_DIR, run

from .conftest import REPO

TINY = ["agent=ppo_cartpole", "agent.num_envs=4", "agent.num_steps=16", "agent.total_timesteps=512",
        "agent.num_minibatches=2", "agent.update_epochs=2", "updates_per_chunk=2", "checkpoint_every=0",
        "progress=false", "logger=disabled", "eval_episodes_envs=0"]
# Parameters of the 4-device runs may differ from the 1-device run in the last bits (see below).
PARAM_ATOL = 1e-5


def env_with_repo(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


# ----------------------------------------------------------------------------- devices
FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    from flax import serialization
    from hydra import compose, initialize_config_dir
    from splitrl.config import ConfigError
    from splitrl.training.train import CONF_DIR, run

    tiny, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    def train(name, *over):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*tiny, "logger.console=false", *over])
        summary = run(cfg, out_dir / name)
        final = out_dir / name / "final_params.msgpack"
        return summary, serialization.msgpack_restore(final.read_bytes()) if final.exists() else None

    members = ["num_seeds=2", "lr_grid=[1.0e-4,3.0e-4]"]                # 4 policies
    one, p1 = train("one", "devices=1", *members)
    result = {"devices": len(jax.devices()), "one": one["devices"], "runs": {}}
    for shard in ("members", "envs"):
        s, p = train(shard, "devices=all", f"shard={shard}", *members)
        diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p1, p))
        equal = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), p1, p))
        result["runs"][shard] = {"devices": s["devices"], "max_abs_diff": max(diff), "bit_equal": all(equal),
                                 "shapes_equal": jax.tree.structure(p1) == jax.tree.structure(p),
                                 "curve": s["curve"], "members": s["members"]}
    result["curve_one"] = one["curve"]
    # interrupted on 4 devices, resumed on 1: devices and shard are not part of the checkpoint's identity
    train("moved", "devices=all", "shard=members", "checkpoint_every=2", "stop_after=4", *members)
    moved, pm = train("moved", "devices=1", "checkpoint_every=2", "resume=true", *members)
    result["moved"] = {"updates": moved["updates"], "devices": moved["devices"],
                       "max_abs_diff": max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                                                        p1, pm)))}
    errors = {}
    for name, over in (("members", ["shard=members", "num_seeds=3"]), ("envs", ["shard=envs", "agent.num_envs=6",
                                                                               "agent.num_minibatches=3"])):
        try:
            train("bad_" + name, "devices=all", *over)
        except ConfigError as e:
            errors[name] = str(e)
    result["errors"] = errors
    print("RESULT " + json.dumps(result))
""")


def test_four_forced_host_devices_match_the_one_device_run(tmp_path):
    """4 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4): 4 policies trained split by
    member (one per device, shard_map) and split by env (each policy's 4 envs over 4 devices, GSPMD)
    against the same 4 policies on one device.

    Not bit-equal, and that is XLA, not a bug: the program each device runs is compiled for a
    partitioned module (num_partitions=4; members: 1 policy instead of 4 under the vmap) and XLA:CPU
    fuses and vectorises it differently, so float32 rounding differs in the last bits (measured after
    one update: 1.5e-8 on weights of order 0.1-1; after the 8 updates here ~4e-7; envs also sums
    over devices in another order). Same structure, same PRNG streams, same episodes: we check the
    parameters to 1e-5 and the learning curves to 1e-4 relative. Also: a run interrupted on 4 devices
    resumes on 1 (to the same tolerance)."""
    env = env_with_repo(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", FOUR_DEVICES, json.dumps(TINY), str(tmp_path)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))
    assert result["devices"] == 4 and result["one"]["devices"] == 1
    for shard, r in result["runs"].items():
        assert r["devices"] == {"devices": 4, "platform": "cpu", "shard": shard}, r["devices"]
        assert r["shapes_equal"] and len(r["members"]) == 4
        assert r["max_abs_diff"] <= PARAM_ATOL, (shard, r["max_abs_diff"])
        for a, b in zip(result["curve_one"], r["curve"], strict=True):
            assert a["update"] == b["update"]
            assert a["episode_return"] == pytest.approx(b["episode_return"], rel=1e-4, nan_ok=True), (shard, a, b)
    moved = result["moved"]
    assert moved["updates"] == 8 and moved["devices"]["devices"] == 1 and moved["max_abs_diff"] <= PARAM_ATOL
    assert "shard = members" in result["errors"]["members"] and "3 policies" in result["errors"]["members"]
    assert "agent.num_envs = 6" in result["errors"]["envs"] and "devices = 4" in result["errors"]["envs"]


def test_bad_device_settings_are_clear_errors(tmp_path):
    def train(*over):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return run(compose(config_name="train", overrides=[*TINY, *over]), tmp_path)

    with pytest.raises(ConfigError, match=r"devices = 64: only \d+ cpu device\(s\) are visible.*"
                                          r"xla_force_host_platform_device_count"):
        train("devices=64")
    with pytest.raises(ConfigError, match=r"devices = 0: must be a positive integer or 'all'"):
        train("devices=0")
    with pytest.raises(ConfigError, match=r"shard = 'rows': must be one of"):
        train("shard=rows")


# ----------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster on this machine with 2 CPUs (2 jobs at once), loopback only, with its own auth
    token (in the environment, which the sweep subprocesses inherit; nothing written to ~/.ray);
    always shut down."""
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                             "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})   # bind to 127.0.0.1, not the host address
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")   # short: Ray's unix socket paths are length-limited
    try:
        ray = pytest.importorskip("ray", reason="the `scale` extra (ray) is not installed")
        try:
            context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
            yield {"address": context.address_info["gcs_address"],
                   "node_id": ray.get_runtime_context().get_node_id()}
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sweep(tmp_path: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from splitrl.training.train import main; main()", "--multirun", *TINY, *overrides,
           f"hydra.sweep.dir={tmp_path}"]
    return subprocess.run(cmd, cwd=tmp_path, env=env_with_repo(), capture_output=True, text=True, timeout=timeout)


def test_a_failing_job_fails_the_ray_sweep_with_its_reason(tmp_path, ray_cluster):
    out = sweep(tmp_path, "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster['address']}",
                "agent.num_minibatches=3")
    assert out.returncode != 0
    assert "exited with code 2" in out.stderr, out.stderr[-3000:]


def test_optuna_sweep_over_the_learning_rate_through_ray(tmp_path, ray_cluster):
    pytest.importorskip("optuna", reason="the `scale` extra (hydra-optuna-sweeper) is not installed")
    out = sweep(tmp_path, "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster['address']}",
                "hydra/sweeper=tune", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    assert out.returncode == 0, out.stderr[-4000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"agent.lr", "agent.ent_coef"}   # splitrl/conf/hydra/sweeper/tune.yaml
    assert 1e-5 <= best["best_params"]["agent.lr"] <= 1e-3
    returns = [json.loads((d / "summary.json").read_text())["curve"][-1]["episode_return"]
               for d in tmp_path.iterdir() if (d / "summary.json").exists()]
    assert len(returns) == 2 and best["best_value"] == pytest.approx(max(returns))
    # both trials ran as tasks on the test's cluster (its node id), not in the sweep's own process
    done = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if " completed after " in line]
    assert len(done) == 2 and all(ray_cluster["node_id"] in line for line in done), out.stdout[-3000:]
    assert f"on the Ray cluster at {ray_cluster['address']}" in out.stdout + out.stderr


# ----------------------------------------------------------------------------- bench
def test_bench_device_flags_fail_clearly_when_the_device_is_absent(capsys):
    import jax

    from splitrl.bench.cli import main
    platforms = {d.platform for d in jax.devices()}
    if "gpu" not in platforms:
        with pytest.raises(SystemExit) as e:
            main(["train", "--device", "gpu"])
        assert e.value.code == 2 and "--device gpu: JAX has no such device here" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["env", "--device", "gpu"])
    with pytest.raises(SystemExit) as e:
        main(["train", "--devices", "3", "--seed-counts", "1,4"])
    assert e.value.code == 2 and "--devices 3 must be >= 1 and divide every seed count" in capsys.readouterr().err
    if len(jax.devices()) < 64:
        with pytest.raises(SystemExit) as e:
            main(["train", "--devices", "64", "--seed-counts", "64", "--skip", "hppo,rejax,sb3", "--env-counts", "4"])
        assert "only" in capsys.readouterr().err
