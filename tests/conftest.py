"""Test-wide set-up: 8 simulated CPU devices, so every mesh is exercised on one machine; quick XLA
builds; and one compilation cache for the whole test run."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.xla_flags import FULL_BUILD_OPTIONS, with_quick_build

_given = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _given:
    _given += " --xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = with_quick_build(_given)  # tests/xla_flags.py says why
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the commands they start in subprocesses) compile the same small programs: one
# persistent JAX cache for the run, shared by the xdist workers and every subprocess through the
# environment, saves much of it (three train test files: 149 s -> 93 s). It starts empty each run, so nothing a test
# checks depends on an earlier run; JAX reads these variables at import, before any test module.
# The first process to get here names it (the xdist controller: its workers inherit the variable).
_CACHE = Path(tempfile.gettempdir()) / f"scalelab-tests-jax-cache-{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# With JAX's cache set, the CLI leaves it alone; in-process tests must not point it elsewhere either.
os.environ.setdefault("SCALELAB_COMPILE_CACHE", "off")


def pytest_sessionfinish(session):
    """The run's cache goes when the run ends, removed by the process that named it."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") == str(_CACHE):
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def fully_optimized_fit_solver():
    """The fit's L-BFGS loop is one program that runs many evaluations per call: at the quick build a
    law fit with 100 bootstrap resamples took 0.9 s instead of 0.17 s. It keeps XLA's defaults, as users get."""
    import jax

    from scalelab.scaling.fit import lbfgs

    with pytest.MonkeyPatch.context() as patch:
        solve = jax.jit(lbfgs._solve, static_argnums=(0, 1), compiler_options=FULL_BUILD_OPTIONS)
        patch.setattr(lbfgs, "_solve_jit", solve)
        yield
