"""The operator's report: one self-contained HTML page over the registry, the event log and
the loop's state."""
