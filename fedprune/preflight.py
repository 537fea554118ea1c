"""Everything a run checks before it starts anything heavy (no Ray, no training).

``preflight`` is the one validation that ``fedprune config --check``, ``simulate`` and ``train`` run,
so ``--check`` says "ok" exactly when those commands would start. It checks, in order: the config's
schema and ranges (finite numbers included; ``ExperimentConfig.validate``), the requested epoch count,
that the dataset is present (or may be downloaded), and that every client's budget can train the
smallest model it may reach at batch 1 (``fedprune.feasibility``). Every failure is one line:
``ConfigError`` for the config, ``DatasetNotFound`` for missing data.
"""

from __future__ import annotations

from fedprune.config import ConfigError, ExperimentConfig
from fedprune.data import DatasetNotFound, load_dataset, locate_dataset


def check_data_available(cfg: ExperimentConfig) -> None:
    """``DatasetNotFound`` (one line) when the dataset is absent and ``data.download`` is false."""
    if cfg.data.download or locate_dataset(cfg.data.dataset, cfg.data.data_dir or None) is not None:
        return
    load_dataset(cfg.data.dataset, cfg.data.data_dir or None, False)  # torchvision layouts (CIFAR-10)


def preflight(cfg: ExperimentConfig, *, epochs: int | None = None) -> ExperimentConfig:
    """Validate ``cfg`` as every command does before starting; returns ``cfg``.

    ``epochs``: the centralized trainer's ``--epochs`` when given (must be >= 1).
    """
    from fedprune.feasibility import check_budgets

    cfg.validate()
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs}: must be >= 1")
    try:
        check_data_available(cfg)
    except DatasetNotFound:
        raise
    except (OSError, RuntimeError, ValueError) as err:  # an unreadable or damaged dataset folder
        raise DatasetNotFound(f"{cfg.data.dataset}: cannot read the dataset ({err})") from None
    check_budgets(cfg)
    return cfg
