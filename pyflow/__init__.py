"""pyflow: a production-grade template for Prefect 3 flows, with a WARN notices ETL as its example."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pyflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
