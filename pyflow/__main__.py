"""``python -m pyflow``: run one of this project's flows once, here (the kit's command line)."""

from pyflow_kit.cli import run

if __name__ == "__main__":
    run()
