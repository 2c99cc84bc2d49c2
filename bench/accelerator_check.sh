#!/usr/bin/env bash
# The accelerator check (issue 19) on a lent GPU, as one prepared command.
#
#   bash bench/accelerator_check.sh [--parts mfu,attention,decode,agreement]
#
# From the repository root on a machine whose python3 has JAX with CUDA (the lent H200 has JAX 0.11).
# With the device tool: run(command="bash bench/accelerator_check.sh", timeout_s=600). It must finish
# within 8 minutes, compiles included: it prints each part's elapsed time and the total, and stops at
# 9 minutes (ACCELERATOR_CHECK_TIMEOUT_S, default 540 s) so the tool's 10-minute limit still returns the
# output. Results land in bench/results/accelerator.json (or --out), and in $OUT as well where the
# device tool sets it; record them in docs/benchmarks.md ("Accelerator check") with the date and device.
#
# It installs nothing but scalelab itself, without dependencies: pip must not replace the machine's
# CUDA JAX with this repo's CPU pins (nor can it download anything there). If even that install fails
# (an old setuptools, say), a folder of links gives Python the same scalelab.* names instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
run_dir=$PWD

if ! "$PY" -c "import scalelab.bench.accelerator_check" 2>/dev/null; then
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . ; then
    # setuptools maps scalelab.<pkg> to the top-level folder <pkg>/ (pyproject.toml); links do the same.
    shim=$(mktemp -d)/site
    mkdir -p "$shim/scalelab"
    ln -s "$PWD"/scalelab/* "$shim/scalelab/"
    for pkg in runtime model parallel data train inference posttrain scaling bench configs; do
      ln -s "$PWD/$pkg" "$shim/scalelab/$pkg"
    done
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    run_dir=$shim/..  # not the repo root, whose scalelab/ folder would hide the links
  fi
fi

export PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU by default; the 1B rung with XLA attention at 8k tokens needs more headroom.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
cd "$run_dir"  # give --out an absolute path
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
status=0
timeout "${ACCELERATOR_CHECK_TIMEOUT_S:-540}" "$PY" -m scalelab.bench.accelerator_check "$@" || status=$?
cd - >/dev/null
if [ -n "${OUT:-}" ] && [ -f bench/results/accelerator.json ]; then
  cp bench/results/accelerator.json "$OUT/"
fi
exit "$status"
