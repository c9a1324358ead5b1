"""SPEC-018 §2–§3: the transition table, the Session and Peer aggregates, timers, config,
errors and the frames the manager exchanges. Imports nothing from the rest of the domain."""
