"""Constants shared by the crypto tests (importable: pytest puts tests/crypto on sys.path)."""

NOW_US = 1_800_000_000_000_000  # a fixed "now" (2027-01-15); the domain never reads a clock
DAY_US = 86_400_000_000
