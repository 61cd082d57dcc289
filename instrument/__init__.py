"""Paik's live side: parameters, control (OSC, MIDI, keys), the GL renderer, the window,
outputs and the command line. It never imports diffusers: captures are read through
:mod:`paik.capture.bundle` (and, on a CUDA machine, :mod:`paik.capture.store`) only."""
