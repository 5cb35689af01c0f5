"""Root conftest: `pytest --benchmark` runs the benchmark suite (pytest-benchmark has no such flag itself), and the
efficiency suite's options (benchmarks/test_efficiency.py)."""


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run only the benchmarks in benchmarks/ (same as --benchmark-only)")
    group = parser.getgroup("clipood efficiency suite")
    group.addoption("--bench-scale", default="mini,vit-b-16",
                    help="comma-separated scales of the efficiency suite: mini, vit-b-16 (default: both)")
    group.addoption("--bench-json", default="benchmark-results/efficiency.json",
                    help="where the efficiency record (JSON with machine and git metadata) is written")
    group.addoption("--bench-rounds", type=int, default=0,
                    help="timed rounds per measurement (0 = the scale's default: mini 5; vit-b-16 2 on CPU, 5 on GPU)")
    group.addoption("--bench-train-budget", type=float, default=0.0,
                    help="longest predicted training step (s) that is run and timed; longer ones are estimated "
                         "from their FLOPs (0 = default: unlimited on mini and on a GPU, 30 s for vit-b-16 on CPU)")


def pytest_configure(config):
    if config.getoption("--benchmark", default=False):
        config.option.benchmark_skip = False
        config.option.benchmark_only = True
