"""Data building blocks, free of Ray: readers, text cleaning, PII redaction, dedup,
tokenization, packing, the pure ingest steps and dataset snapshots."""
