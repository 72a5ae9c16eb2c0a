"""Quiet access to learn2learn's task machinery.

learn2learn 0.2.0 imports gym at package import, which prints a deprecation notice;
it is swallowed here so that the project's output stays clean.
"""
from __future__ import annotations

import contextlib
import io
import warnings


def l2l_data():
    """Return the ``learn2learn.data`` module, imported without gym's noise."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        import learn2learn.data as data
    return data
