"""Run checkpoints, under the names their callers import.

The store (orbax saves sealed with a manifest, retention, verified restores, quarantine of
corrupt checkpoints) is in checkpoint_store.py; the JSON record saved with each checkpoint and
the checks that a checkpoint fits a config are in checkpoint_compat.py; reading only the
parameters, for `--init-from` and `scalelab generate`, is in checkpoint_params.py.
"""

from scalelab.train.checkpoint_compat import (
    FORMAT_VERSION,
    RESUMABLE_MODEL_KEYS,
    RESUME_ADVICE,
    CheckpointError,
    check_compatible,
    checkpoint_meta,
    config_changes,
    data_reference,
    flat_shapes,
    path_name,
    read_meta,
    stored_shapes,
)
from scalelab.train.checkpoint_params import INIT_FROM_ADVICE, load_params
from scalelab.train.checkpoint_store import (
    CHECKPOINT_DIR,
    QUARANTINE_DIR,
    CheckpointStore,
    Restored,
    clear_checkpoints,
    os_error_reason,
    quiet_write_failures,
    refuse_unmanaged,
    saved_steps,
    warn,
)

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "INIT_FROM_ADVICE",
    "QUARANTINE_DIR",
    "RESUMABLE_MODEL_KEYS",
    "RESUME_ADVICE",
    "CheckpointError",
    "CheckpointStore",
    "Restored",
    "check_compatible",
    "checkpoint_meta",
    "clear_checkpoints",
    "config_changes",
    "data_reference",
    "flat_shapes",
    "load_params",
    "os_error_reason",
    "path_name",
    "quiet_write_failures",
    "read_meta",
    "refuse_unmanaged",
    "saved_steps",
    "stored_shapes",
    "warn",
]
