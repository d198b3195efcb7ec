"""Everything only ``flywheel demo`` uses: the simulated world (products, facts, users), the
corpus writer, the demo model's preparation, the demo run and its loop act. Nothing in
``core/``, ``jobs/``, ``actors/`` or ``serve_apps/`` imports it."""
