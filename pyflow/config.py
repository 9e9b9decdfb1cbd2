"""This project's settings: every project's (pyflow-kit's `Settings`), and any of its own.

Add a setting as a field with a description; `invoke docs` puts it in the README's table.
"""

from pyflow_kit.settings import Settings as KitSettings


class Settings(KitSettings):
    """The settings of this project's flows, from the environment and `.env`."""
