"""The verifiable log: RFC 6962 hashing over the journal's append order (pure functions here,
storage in the adapters)."""
