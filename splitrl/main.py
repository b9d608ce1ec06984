"""`splitrl`: the main job (Hydra app). Today it prints the profile of `profile`; the training and
evaluation issues extend `job`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from splitrl.config import ConfigError, ProfileConfig, build
from splitrl.profiles import ProfileError, load_device, load_model

JOBS = ("profile",)
# An absolute path: the entry-point script is not in the package, so a relative path would not resolve.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def run(cfg: DictConfig) -> dict:
    if cfg.job not in JOBS:
        raise ConfigError(f"config job = {cfg.job!r}: must be one of {JOBS}")
    prof = build(ProfileConfig, OmegaConf.to_container(cfg.profile, resolve=True), "profile")
    from splitrl.profiles.report import make_console, show_profile
    return show_profile(load_model(prof.model), load_device(prof.edge),
                        load_device(prof.cloud) if prof.cloud else None, prof.edge_weight_format,
                        prof.cloud_weight_format, prof.context, prof.table_kind, make_console())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
