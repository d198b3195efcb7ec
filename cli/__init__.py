"""The ``flywheel`` console script: one front door to every job, service and record."""
