"""scalelab: train transformer language models with JAX and Flax, and measure how their loss scales.

The installed packages, each with one job; imports point down this list, never up:

    scalelab.errors, scalelab.files   leaves every package may use (the user-error base, file I/O)
    scalelab.runtime                  the host process: XLA settings, measured peak FLOP/s, compile cache
    scalelab.model                    Flax NNX models, their config, parameter and FLOP counts
    scalelab.parallel                 meshes, logical-to-mesh axis rules, pipeline schedules, multi-host
    scalelab.data                     corpora, tokenizer, packing, the step-indexed loader, objectives
    scalelab.train                    the root config, optimizer, train/eval steps, loop, checkpoints
    scalelab.inference                KV-cache decoding, quantization, generate
    scalelab.scaling                  sweeps (scaling.sweep) and power-law fits (scaling.fit)
    scalelab.bench                    benchmarks that print ratios against a same-run baseline
    scalelab.cli                      the `scalelab` command: every subcommand, errors to exit codes
"""
