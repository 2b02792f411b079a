"""The run directory and the pipeline over it.

Import the modules directly (``difflens.run.layout``, ``.artifacts``, ``.config``, ``.stages``,
``.pipeline``): this package's ``__init__`` imports nothing, so the low-level layout and artifact
modules can be used by every layer without pulling in the pipeline.
"""
