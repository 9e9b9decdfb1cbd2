"""The example: a WARN notices ETL that consolidates layoff notices from many CSV sources.

Everything that is the example's own lives here (its reading, column rules, values, ETL steps,
bundled sample, parameters, benchmark and command-line report), with its tests in ``tests/warn/``.
The template around it (settings, deployments, the local loop, publishing) does not import it.

To replace it with your own flow: write your tasks in ``pyflow/tasks.py`` and compose them in
``pyflow/flow.py`` (or run ``invoke new-flow NAME``), listing the flow in ``FLOWS``; then delete
this folder, ``tests/warn/``, and the example's tasks and flow from ``pyflow/tasks.py`` and
``pyflow/flow.py``; then run ``invoke check`` and ``invoke test`` (see the README).
"""
