"""The root config of a training run, under the names its callers import.

The schema (one dataclass per section, and `validate` for checks across sections) is in
config_schema.py; reading it from YAML, `--set` overrides and writing it back are in config_io.py.
"""

from scalelab.configs import CONFIG_DIR
from scalelab.train.config_io import (
    apply_override,
    config_from_dict,
    flatten_config,
    from_dict,
    load_config,
    load_raw,
    merge_config,
    resolve_config_path,
    save_config,
    to_dict,
)
from scalelab.train.config_schema import (
    NAN_POLICIES,
    CheckpointConfig,
    Config,
    LoggingConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainLoopConfig,
    validate,
)

__all__ = [
    "CONFIG_DIR",
    "NAN_POLICIES",
    "CheckpointConfig",
    "Config",
    "LoggingConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainLoopConfig",
    "apply_override",
    "config_from_dict",
    "flatten_config",
    "from_dict",
    "load_config",
    "load_raw",
    "merge_config",
    "resolve_config_path",
    "save_config",
    "to_dict",
    "validate",
]
