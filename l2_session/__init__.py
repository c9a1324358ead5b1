"""l2-session: SPEC-018 sessions as an event-sourced, BLAKE3-chained, Ed25519-signed ledger.

The layers are sub-packages: ``l2_session.domain`` (sans-I/O state machine),
``l2_session.infrastructure`` (signed ledger, keys, clocks), ``l2_session.projections``,
``l2_session.transports`` and ``l2_session.tools`` (the ``l2-session`` CLI).
"""

__version__ = "0.1.0"
