"""Parameters and control: the one parameter bank and grammar, keys, OSC, OSCQuery, MIDI, console, scenes."""
