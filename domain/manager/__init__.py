"""SPEC-018 §5.2: the session manager — establish, accept, resume, tick — and what it holds:
answering, closing, recovery, outputs, deadlines, peers in memory and the key exchange."""
