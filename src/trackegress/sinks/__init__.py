"""Where frames are written as they arrive: base.py (the Sink protocol), file.py + muxer.py + layers.py (a file,
remuxed; the top layer; layer switches), naming.py (file name templates), websocket.py + pcm.py + jitter.py (live
PCM: decoding, the real-time clock) over wslink.py (the WebSocket connection: dial, redial, delivery)."""
