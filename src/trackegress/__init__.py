"""trackegress: LiveKit Track Egress in Python."""
