"""JAX's persistent compilation cache under scalelab's cache directory, for every command.

A repeated `scalelab train`, `fit`, `generate` or `sweep run` loads its compiled programs from
disk instead of compiling them again; on a small CPU run compiling is a large share of the wall
time, and an approach-3 fit compiles its batched L-BFGS for each law. JAX reads the setting at its
first compile, so the CLI calls `use_compile_cache` before any command runs. The CLI imports JAX only
for the commands that use it, so the setting then goes into the environment, which JAX reads when
it is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from scalelab.files import cache_dir

# SCALELAB_COMPILE_CACHE=off leaves JAX's own setting alone (tests set it: the setting is global to a process).
SWITCH = "SCALELAB_COMPILE_CACHE"
SUBDIR = "jax-compile"


def use_compile_cache(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Point JAX's persistent cache at <cache>/jax-compile and cache every program; the directory, or None.

    Nothing changes when the user chose a cache already (JAX_COMPILATION_CACHE_DIR or jax.config)
    or turned ours off. Every program is kept, not only those that took a second to compile: a run
    compiles a few dozen small ones, and together they are most of its start-up on a CPU.
    """
    jax = sys.modules.get("jax")
    chosen = environ.get("JAX_COMPILATION_CACHE_DIR") or (jax is not None and jax.config.jax_compilation_cache_dir)
    if environ.get(SWITCH, "").lower() in ("0", "off", "false", "no") or chosen:
        return None
    directory = cache_dir() / SUBDIR
    settings = {
        "jax_compilation_cache_dir": str(directory),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        if jax is None:
            os.environ[name.upper()] = str(value)
        else:
            jax.config.update(name, value)
    return directory
