"""`cispo-train`: the Hydra entry point. `cispo-train --cfg job` prints the resolved config."""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from cispo.config import Config, ConfigError, validate

ConfigStore.instance().store(name="config_schema", node=Config)


@hydra.main(version_base="1.3", config_path="pkg://cispo.conf", config_name="config")
def _main(dict_cfg: DictConfig) -> None:
    try:
        cfg = validate(OmegaConf.to_object(dict_cfg))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    # Imported after validation: a bad config fails before Ray starts.
    from cispo.supervise import run_job

    run_job(cfg)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
