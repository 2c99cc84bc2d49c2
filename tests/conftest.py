"""Test-wide set-up: 8 simulated CPU devices, so every mesh is exercised on one machine."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI points JAX's compilation cache at $SCALELAB_CACHE; in-process tests keep the global setting alone.
os.environ.setdefault("SCALELAB_COMPILE_CACHE", "off")
