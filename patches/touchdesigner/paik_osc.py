"""Paik for TouchDesigner: paste into a Text DAT named ``paik_osc`` (see README.md here).

Sends through an OSC Out DAT named ``oscout_paik`` (network address 127.0.0.1, port 9000,
protocol UDP) and reads feedback from an OSC In DAT named ``oscin_paik`` (port 9001) into a
Table DAT named ``paik_state``. Nothing runs at import: TouchDesigner calls the functions.

Use from other DATs:  mod('paik_osc').send('/paik/colormap', 'viridis')
A CHOP Execute DAT on a Constant/Slider CHOP whose channels are named after parameters
(step, block, gain, ...) forwards them as 0..1 faders: see onValueChange below.
"""

OSC_OUT = "oscout_paik"
STATE = "paik_state"
FEEDBACK_PORT = 9001

# every address this setup sends, with its OSC type tags (checked by Paik's tests)
SENDS = {
    "/paik/step/norm": "f",
    "/paik/block/norm": "f",
    "/paik/gain/norm": "f",
    "/paik/gamma/norm": "f",
    "/paik/threshold/norm": "f",
    "/paik/opacity/norm": "f",
    "/paik/time/norm": "f",
    "/paik/token": "s",
    "/paik/head": "i",
    "/paik/block": "i",
    "/paik/step": "f",
    "/paik/colormap": "s",
    "/paik/view": "s",
    "/paik/scene/recall": "i",
    "/paik/scene/save": "i",
    "/paik/subscribe": "i",
    "/paik/playing/toggle": "",
    # paik live: the next take, and bend slot 1
    "/paik/prompt": "s",
    "/paik/generate": "",
    "/paik/generate/cancel": "",
    "/paik/seed": "i",
    "/paik/seed/cycle": "",
    "/paik/bend": "is",
    "/paik/bend/off": "i",
    "/paik/bend1_op": "s",
    "/paik/bend1_word": "s",
    "/paik/bend1_arg": "s",
    "/paik/bend1_amount/norm": "f",
    "/paik/bend1_blocks": "s",
    "/paik/bend1_steps": "s",
}
# feedback this script reads from the state table (Paik sends it to subscribers)
SHOWS = {"/paik/progress": "ii", "/paik/take": "s", "/paik/error": "s"}
# CHOP channels forwarded as faders: channel name -> address
FADERS = {name: f"/paik/{name}/norm" for name in ("step", "block", "gain", "gamma", "threshold", "opacity", "time",
                                                  "bend1_amount")}


def send(address, *args):
    """One OSC message; the types must match SENDS (TouchDesigner would otherwise send floats)."""
    tags = SENDS[address]
    if len(tags) != len(args):
        raise ValueError(f"{address} takes {len(tags)} argument(s)")
    vals = [int(a) if t == "i" else float(a) if t == "f" else str(a) for t, a in zip(tags, args)]
    op(OSC_OUT).sendOSC(address, vals, asBundle=False, useNonStandardTypes=True)  # noqa: F821 (TouchDesigner global)


def subscribe():
    """Ask Paik to send its state to FEEDBACK_PORT (run once after Paik starts)."""
    send("/paik/subscribe", FEEDBACK_PORT)


def token(word):
    send("/paik/token", word)


def head(index):
    send("/paik/head", int(index))  # -1 = mean over heads


def colormap(name):
    send("/paik/colormap", name)


def scene(number, save=False):
    send("/paik/scene/save" if save else "/paik/scene/recall", int(number))


# -- paik live ------------------------------------------------------------------------------------
def generate(prompt=None, seed=None):
    """A new take; a prompt and a seed, when given, are set first."""
    if prompt is not None:
        send("/paik/prompt", prompt)
    if seed is not None:
        send("/paik/seed", int(seed))
    send("/paik/generate")


def cancel():
    send("/paik/generate/cancel")


def next_seed():
    send("/paik/seed/cycle")


def bend(slot, line):
    """A whole bend slot (1-4) from one line, like bend(1, 'gain kiss 2 blocks 10-20')."""
    send("/paik/bend", int(slot), line)


def bend_off(slot):
    send("/paik/bend/off", int(slot))


def progress():
    """(steps done, total) of the take, from the feedback table, or None."""
    row = op(STATE)["/paik/progress", 1]  # noqa: F821 (filled by onReceiveOSC)
    if row is None or len(row.val.split()) != 2:
        return None
    done, total = row.val.split()
    return int(done), int(total)


# -- CHOP Execute DAT callbacks (set its CHOPs parameter to your fader CHOP) ------------------------
def onValueChange(channel, sampleIndex, val, prev):  # noqa: N802 (TouchDesigner's name)
    address = FADERS.get(channel.name)
    if address is not None:
        send(address, min(1.0, max(0.0, float(val))))


# -- OSC In DAT callback (Callbacks DAT of oscin_paik): keep the state table in sync ----------------
def onReceiveOSC(dat, rowIndex, message, bytes, timeStamp, address, args, peer):  # noqa: N802
    table = op(STATE)  # noqa: F821
    value = " ".join(str(a) for a in args)
    if table[address, 0] is None:
        table.appendRow([address, value])
    else:
        table[address, 1] = value
