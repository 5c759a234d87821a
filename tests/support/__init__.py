"""Helpers for end-to-end tests: a real livekit-server, sample media and a pre-encoded publisher."""
