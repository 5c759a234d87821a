"""What an egress writes to, each output doing its own plumbing while ``egress.py`` drives the status: file.py
(FileOutput: claim, file name, upload, manifest, results, loss details; the files a killed process left),
stream.py (StreamOutput: the WebSocket PCM stream and its result), manifest.py (the JSON manifest), base.py (Output,
what the egress asks of either)."""
