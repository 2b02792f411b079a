"""The run directory: where every artifact lives (:mod:`.layout`) and what each holds (:mod:`.artifacts`).

A low-level package: it imports only :mod:`difflens.files` and :mod:`difflens.errors`, so every
stage, method, evaluation, agent and report module can use it; the pipeline that drives the stages
(:mod:`difflens.run`) sits above them all. Import the modules directly.
"""
