"""Measurement tools: scripts that measure the harness, the methods and the statistics, apart from the harness.

Each tool is a module run as ``python -m bench.tools.<name>`` (``--help`` for its options):

    perf            the engine against a plain reference loop: steps/s, data wait, peak memory, MFU
    method_cost     one optimizer step per 3D pretraining method, timed (the engine's own ``train_step``)
    position_probe  can a frozen encoder tell where in the body a crop comes from?
    bench_stats     wall time of the statistics behind one leaderboard
    calibration     the leaderboard statistics under the null, simulated from the published variance
    results         put published leaderboard rows back into a results store

``bench/tools/`` is the only part of ``bench/`` allowed to import ``methods/`` and ``datasets/``: the harness knows
no method, dataset or suite by name. A tool that needs the registrations imports them itself (``import datasets,
methods``), and nothing else in ``bench/`` imports a tool.
"""
