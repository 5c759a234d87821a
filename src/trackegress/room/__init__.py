"""Joining a LiveKit room to receive one track: signal.py (the /rtc signalling protocol), subscriber.py (which track,
mute, resume, frames to the egress), transport.py (the MediaTransport seam), native.py (it, on the native core)."""
