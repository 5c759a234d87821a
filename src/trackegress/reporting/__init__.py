"""What happens to an egress, told to others: store.py (EgressInfo in SQLite), webhooks.py (LiveKit-format, signed),
ioinfo_client.py (a worker's reports to IOInfo), ioinfo_server.py (``serve``'s IOInfo for its workers)."""
