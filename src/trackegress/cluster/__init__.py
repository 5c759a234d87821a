"""Egresses across processes over psrpc on Redis: worker.py (``trackegress worker``: claims and runs egresses that
livekit-server or ``serve`` dispatch), dispatch.py (``serve`` handing requests to workers), settings.py (``redis:``,
``cluster_id``, ``cpu_cost``)."""
