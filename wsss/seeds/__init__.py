"""Seed methods: pure functions on arrays (and their small nets)."""
