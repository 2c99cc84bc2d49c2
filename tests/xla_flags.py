"""XLA options for quick CPU builds, for the tests and the commands they start with an XLA_FLAGS of their own.

XLA's CPU code generation at full optimization is most of a small test's compile time and changes
only how fast the machine code runs, not what it computes. XLA's newer CPU fusion emitters cost more
to build than they save on these small programs: without them the gpt-tiny train step compiles in
0.6 s instead of 1.4 s and runs in 58 ms instead of 85 ms (8 simulated devices, 2-core AMD EPYC).
"""

# As compiler options for one program (`.compile(QUICK_BUILD_OPTIONS)`), and as XLA_FLAGS for a process.
QUICK_BUILD_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
QUICK_BUILD = " ".join(f"--{name}={str(value).lower()}" for name, value in QUICK_BUILD_OPTIONS.items())


def with_quick_build(flags: str) -> str:
    """`flags` plus the quick-build flags it does not set itself."""
    extra = [flag for flag in QUICK_BUILD.split() if flag.split("=")[0] not in flags]
    return " ".join([flags, *extra]).strip()


# XLA's own defaults, for the few programs a test runs long enough that the quick build costs more than it
# saves (tests/conftest.py names them).
FULL_BUILD_OPTIONS = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
    "xla_cpu_use_fusion_emitters": True,
}
