"""Encoded media, no I/O: frames.py (EncodedFrame, Codec), codecs.py (the codec table: container, keyframes,
dimensions, parameter sets, blank frames, gap filling), one bitstream module per codec (h264.py, h265.py, vp8.py,
vp9.py, av1.py, opus.py, g711.py), blank.py (the SFU's made-up frames), continuity.py (drop until a keyframe)."""
