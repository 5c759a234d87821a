"""The Twirp ``livekit.Egress`` API: twirp.py (the protocol, JSON and protobuf bodies, error codes), auth.py (the
caller's token and its grants), server.py (the API and the ops ports over a dispatcher)."""
