"""Reporting: what happens to an egress is stored, sent as webhooks, reported over IOInfo and written as a manifest."""
