"""Repository-level pytest configuration.

The programs in fixtures/ and the benchmarks in bench/ are run by the tests,
never collected as tests themselves; suites/ is collected by the plugin from
its registry when a target is given.
"""

collect_ignore = ["fixtures", "suites", "bench", "build", "dist"]
