"""The benchmark registry of transmamba (a source checkout's folder, not part of the installed package).

    run.py          the runner: `python benchmarks/run.py --list`, `--cases a,b --out DIR`, `--suite targets`
    cases/          the registry: every case, its options (ops.py: kernels; models.py: training step, decode,
                    generation; domains.py: point clouds, diffusion, serving)
    report.py       what a run writes: <case>.json/.csv/.md/.png, and the targets report of a suite
    common.py       timing, ceilings, environment, model building, peers, JSON without machine paths

Results go under the ignored `runs/` folder unless `--out` says otherwise.
"""
