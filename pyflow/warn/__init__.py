"""The example: a WARN notices ETL that consolidates layoff notices from many CSV sources.

Everything that is the example's own lives here: its flow (``flow.py``) and tasks
(``tasks.py``), its reading, column rules, values and ETL steps, its bundled sample, its
parameters, its benchmark (`BENCH`, `invoke bench`) and command-line report, with its tests in
``tests/warn/``. Nothing outside it imports it: delete this folder and ``tests/warn/`` (and the
`bench` task in tasks.py) to remove the example, as the README says.
"""

from pyflow_kit.commands import Command, Option

BENCH = Command(
    "bench",
    "Benchmark the csv module, plain Python, the flow on threads and on Dask, and real data.",
    "pyflow.warn.bench",
    options=(
        Option(
            "rows",
            "rows of synthetic input to generate (default: 1,000,000)",
            kind="count",
            default=1_000_000,
        ),
        Option("files", "files to spread the rows over (default: 20)", kind="count", default=20),
        Option(
            "workers",
            "Dask worker processes for the Dask variants (default: 2)",
            kind="count",
            default=2,
        ),
        Option(
            "folder",
            "where inputs and outputs go (default: data/bench)",
            metavar="DIR",
            default="data/bench",
        ),
        Option(
            "variants",
            "comma-separated, of 0 (csv module), a (plain), b (threads), a1 (plain, one engine "
            "thread), p (a plain process per worker), c (temporary Dask), d (running Dask), d1 "
            "(running Dask, one worker), e (the real state files), e2 (the real files again, each "
            "source reused), r (a second `invoke run`) "
            "(default: all)",
        ),
        Option(
            "real_data",
            "folder of the real state files for (e) (default: ../shared/warn-data/raw)",
            metavar="DIR",
        ),
    ),
)
"""`invoke bench`: declared once, for its command line and its invoke task."""
