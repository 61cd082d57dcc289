"""The instrument's benchmarks: render time per view, OSC-to-frame latency, recording."""
