"""Optional libraries, imported only when their output is asked for."""

from __future__ import annotations

import importlib
import sys

from paik.errors import PaikError


def need(module: str, extra: str, what: str, platform: str | None = None):
    """Import ``module`` or raise a PaikError naming the pip extra that provides it."""
    names = {"darwin": "macOS", "win32": "Windows", "linux": "Linux"}
    if platform is not None and not sys.platform.startswith(platform):
        raise PaikError(f"{what} runs on {names[platform]} only (this is {sys.platform})")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PaikError(f"{what} needs the optional package for it: pip install 'paik[{extra}]' "
                        f"({module} could not be imported: {e})") from None
    except OSError as e:  # a wheel whose native runtime does not load here
        raise PaikError(f"{what}: {module} is installed but its runtime library does not load ({e})") from None
