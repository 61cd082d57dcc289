"""The keyboard map: keys to :class:`~paik.instrument.control.params.Command` (data, not code), and the help
text generated from it so the overlay can never disagree with the bindings.

Key names are GLFW's (``glfw.KEY_<NAME>``); "shift" selects the second binding of a key.
"""

from __future__ import annotations

from paik.instrument.control.params import VIEWS, Command

# (key, shift) -> (command, help); order is the help overlay's order
BINDINGS: list[tuple[str, bool, Command, str]] = [
    ("TAB", False, Command("token", "cycle", 1), "next word"),
    ("TAB", True, Command("token", "cycle", -1), "previous word"),
    ("RIGHT", False, Command("step", "nudge", 1), "step +1"),
    ("LEFT", False, Command("step", "nudge", -1), "step -1"),
    ("RIGHT", True, Command("step", "nudge", 0.1), "step +0.1 (crossfade)"),
    ("LEFT", True, Command("step", "nudge", -0.1), "step -0.1"),
    ("UP", False, Command("block", "nudge", 1), "block +1"),
    ("DOWN", False, Command("block", "nudge", -1), "block -1"),
    ("UP", True, Command("block", "nudge", 0.1), "block +0.1 (crossfade)"),
    ("DOWN", True, Command("block", "nudge", -0.1), "block -0.1"),
    ("E", False, Command("head", "cycle", 1), "next head (-1 = all heads reduced)"),
    ("E", True, Command("head", "cycle", -1), "previous head"),
    ("V", False, Command("view", "cycle", 1), "next view"),
    ("V", True, Command("view", "cycle", -1), "previous view"),
    *[(str(i + 1), False, Command("view", "set", v), f"view: {v}") for i, v in enumerate(VIEWS[:9])],
    ("0", False, Command("view", "set", "twin"), "view: twin (bent beside its unbent twin)"),
    ("0", True, Command("view", "set", "diff"), "view: diff (bent minus unbent)"),
    ("R", False, Command("reduce", "cycle", 1), "reduce: mean / max"),
    ("C", False, Command("colormap", "cycle", 1), "next colormap"),
    ("C", True, Command("colormap", "cycle", -1), "previous colormap"),
    ("N", False, Command("norm", "cycle", 1), "normalize: global / frame / step"),
    ("M", False, Command("composite", "cycle", 1), "composite: heatmap / overlay / multiply / screen / alpha"),
    ("B", False, Command("background", "cycle", 1), "background: video / preview / none"),
    ("G", False, Command("gain", "nudge", 0.1), "gain +0.1"),
    ("G", True, Command("gain", "nudge", -0.1), "gain -0.1"),
    ("Y", False, Command("gamma", "nudge", 0.1), "gamma +0.1"),
    ("Y", True, Command("gamma", "nudge", -0.1), "gamma -0.1"),
    ("T", False, Command("threshold", "nudge", 0.05), "threshold +0.05"),
    ("T", True, Command("threshold", "nudge", -0.05), "threshold -0.05"),
    ("O", False, Command("opacity", "nudge", 0.05), "opacity +0.05"),
    ("O", True, Command("opacity", "nudge", -0.05), "opacity -0.05"),
    ("K", False, Command("clip_hi", "nudge", -0.5), "clip top: upper percentile -0.5"),
    ("K", True, Command("clip_hi", "nudge", 0.5), "upper percentile +0.5"),
    ("J", False, Command("clip_lo", "nudge", 0.5), "clip bottom: lower percentile +0.5"),
    ("J", True, Command("clip_lo", "nudge", -0.5), "lower percentile -0.5"),
    ("SPACE", False, Command("playing", "toggle"), "play / pause"),
    ("F10", False, Command("record", "toggle"), "record on / off (paik play --record FILE)"),
    ("PERIOD", False, Command("time", "nudge", 0.01), "time +1%"),
    ("COMMA", False, Command("time", "nudge", -0.01), "time -1%"),
    ("HOME", False, Command("time", "set", 0.0), "back to the first frame"),
    ("S", False, Command("speed", "nudge", 0.25), "speed +0.25"),
    ("S", True, Command("speed", "nudge", -0.25), "speed -0.25"),
    ("F1", False, Command("help", "toggle"), "this help"),
    ("SLASH", True, Command("help", "toggle"), "this help (?)"),
]
# scenes 1-8 on F2-F9 (actions, not parameters: applied by paik.instrument.control.live.Live)
SCENE_BINDINGS: list[tuple[str, bool, Command, str]] = [
    *[(f"F{i + 1}", False, Command("scene", "recall", str(i)), f"recall scene {i}") for i in range(1, 9)],
    *[(f"F{i + 1}", True, Command("scene", "save", str(i)), f"save scene {i}") for i in range(1, 9)],
]
# handled by the window itself (not parameters)
WINDOW_KEYS = [("F", "fullscreen on/off"), ("ESCAPE / Q", "quit")]


def lookup(key: str, shift: bool) -> Command | None:
    for k, s, cmd, _ in BINDINGS + SCENE_BINDINGS:
        if k == key and s == shift:
            return cmd
    if shift:  # keys without a shifted binding do the same with shift held
        for k, s, cmd, _ in BINDINGS:
            if k == key and not s:
                return cmd
    return None


_SHOW = {"SLASH": "?", "PERIOD": ".", "COMMA": ",", "SPACE": "Space", "TAB": "Tab", "HOME": "Home",
         "RIGHT": "Right", "LEFT": "Left", "UP": "Up", "DOWN": "Down"}


def help_lines() -> list[str]:
    out = []
    for key, shift, _, text in BINDINGS:
        if key == "SLASH":
            continue
        name = _SHOW.get(key, key)
        out.append(f"{'Shift+' if shift else ''}{name:<6} {text}")
    out += ["F2-F9  recall scene 1-8", "Shift+F2-F9 save scene 1-8"]
    out += [f"{k:<6} {t}" for k, t in WINDOW_KEYS]
    return out
