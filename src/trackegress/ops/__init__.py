"""Operations: health and Prometheus metrics endpoints."""
