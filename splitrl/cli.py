"""Console entry points. Each sets up the process the same way (the JAX GPU allocator shares the
device between jobs; the JAX platform probe stays quiet), then runs its command's `main`, imported
only when called so that `splitrl` itself starts instantly. The bare `splitrl` lists the commands."""

from __future__ import annotations

import importlib
import logging
import os
import sys

# command -> (module with `main`, what it is for); the order is the order of the data flow
COMMANDS = {
    "splitrl-profiles": ("splitrl.profiles.cli", "profiles: show, validate, build analytic tables, measure a real model (measure cost|ppl), plot"),
    "splitrl-train": ("splitrl.training.train", "train HPPO / flat PPO (or PPO on CartPole) under jit + vmap; Hydra sweeps, W&B, orbax"),
    "splitrl-eval": ("splitrl.evaluation.run", "every baseline and trained run on the same episodes -> tables with 95 % intervals, plots"),
    "splitrl-bench": ("splitrl.bench.cli", "throughput: env steps/s beside gymnax CartPole, training steps/s beside rejax and SB3; all of it with compile times in one process (all --profile cpu|gpu)"),
    "splitrl-export": ("splitrl.export.onnx", "a trained HPPO run dir -> an ONNX policy with its metadata, checked against JAX"),
    "splitrl-cloud": ("splitrl.runtime.cloud", "the cloud half of real split inference (TCP server)"),
    "splitrl-edge": ("splitrl.runtime.edge", "the edge half: generate with the split model, the ONNX policy choosing the split"),
    "splitrl-harness": ("splitrl.runtime.measure", "measure real split inference over a shaped link beside the simulator's prediction"),
}


def _prepare() -> None:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # jobs share a device
    # jax logs "Unable to initialize backend 'tpu'" at INFO while probing platforms; Hydra shows INFO
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def _entry(command: str):
    """The console-script function of `command` (pyproject.toml's [project.scripts] points at these)."""
    def run() -> None:
        _prepare()
        result = importlib.import_module(COMMANDS[command][0]).main()
        sys.exit(result if isinstance(result, int) else 0)
    run.__name__ = run.__qualname__ = command.removeprefix("splitrl-")
    return run


profiles, train, evaluate, bench = (_entry(c) for c in ("splitrl-profiles", "splitrl-train", "splitrl-eval",
                                                         "splitrl-bench"))
export, cloud, edge, harness = (_entry(c) for c in ("splitrl-export", "splitrl-cloud", "splitrl-edge",
                                                     "splitrl-harness"))


def profile_deprecated() -> None:
    """`splitrl-profile` (until 0.3): the measuring commands moved under `splitrl-profiles`."""
    args = sys.argv[1:]
    new = ["plot", *args[1:]] if args[:1] == ["plot"] else ["measure", *args]
    print(f"splitrl-profile is deprecated and goes in 0.3; run: splitrl-profiles {' '.join(new)}", file=sys.stderr)
    _prepare()
    from splitrl.profiles.cli import main
    sys.exit(main(new))


def main() -> None:
    """`splitrl`: what each command is for."""
    from splitrl import __version__
    print(f"splitrl {__version__}: learn where each attention head group and FFN chunk of an LLM runs, edge or cloud.\n")
    width = max(map(len, COMMANDS))
    for name, (_, what) in COMMANDS.items():
        print(f"  {name:<{width}}  {what}")
    print("\nEach command takes --help (Hydra commands: --help and --cfg job). Docs: docs/architecture.md.")
