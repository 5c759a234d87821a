"""psrpc, as livekit-server speaks it: wire.py (the wire format, service names, error codes), bus.py (the Redis bus,
psrpc servers and clients). Below cluster/ and reporting/, which both talk over it."""
