"""Errors a user can cause. The CLI prints their message, without a traceback, and exits 2."""


class PaikError(Exception):
    """A mistake a user can make (a bad flag, a missing file, an unknown word): the message says
    what was wrong and what to do instead."""


class BundleError(PaikError):
    """A bundle that cannot be opened: missing, truncated, corrupt, or not a Paik bundle."""
