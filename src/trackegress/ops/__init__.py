"""Operations: health.py (the health endpoint), metrics.py (Prometheus), ports.py (``health_port`` /
``prometheus_port`` listeners)."""
