"""pyflow: this project's flows, run, tested and released with pyflow-kit."""
