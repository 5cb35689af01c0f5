"""Root conftest: `pytest --benchmark` runs the benchmark suite (pytest-benchmark has no such flag itself)."""


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run only the benchmarks in benchmarks/ (same as --benchmark-only)")


def pytest_configure(config):
    if config.getoption("--benchmark", default=False):
        config.option.benchmark_skip = False
        config.option.benchmark_only = True
