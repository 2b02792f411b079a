"""The pipeline over a run directory: its config (``.config``), stages (``.stages``) and runner
(``.pipeline``). The directory's layout and typed artifacts live below it, in :mod:`difflens.rundir`,
so every layer may use them without importing the pipeline (data flows one way: rundir ← adl, methods,
eval, agent, report ← run ← cli).

Import the modules directly: this package's ``__init__`` imports nothing.
"""
