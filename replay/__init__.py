"""replay: tutord's durable memory.

The SQLAlchemy schema and engine helpers, the ingest of interaction logs, and the
replay buffer with its sampling policies. It imports nothing from tutord's other
packages; `daemon/` is its only caller that wires it to the rest.
"""
