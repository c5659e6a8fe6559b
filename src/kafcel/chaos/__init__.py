"""The chaos suite: faults injected into a running pipeline, effects counted in a ledger."""
