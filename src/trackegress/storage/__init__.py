"""Where finished files go: backends.py (the backend table), s3.py, gcs.py, azure.py (each backend's settings,
parsers and client), options.py (proxies, retries), settings.py (``storage:`` / ``backup:`` / a request's upload),
uploader.py (destination, then backup), claims.py (one egress per output), local.py (the local directory)."""
