"""chainwatch tests."""
