"""SPEC-018 §2.1 and §7: the authenticated hybrid handshake — wire format, keys, KEM, prekey
bundles, the sealed channel, the admission gate, the engine, resumption and rotation.
Imports from domain.session only."""
