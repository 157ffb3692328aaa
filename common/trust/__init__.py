"""Trust: hash-chained audit trails, Ed25519 signatures of releases, TLS certificates and keys."""
