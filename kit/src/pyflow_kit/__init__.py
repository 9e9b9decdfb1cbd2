"""pyflow-kit: the machinery of a pyflow project, which knows no flow but the project's own.

Importing it imports nothing else: invoke's tasks (`pyflow_kit.collection`) load with the
Python that runs invoke, before the project's environment exists.
"""

__version__ = "0.3.0"
