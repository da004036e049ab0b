"""The one exception type for messages meant for the user.

``InputError`` is raised for bad configuration, a bad labels table, a missing folder: anything the
user can fix by reading the message. Stage scripts print it as one ``error: <message>`` line and exit
with status 2 (``stages/_cli.py``). Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with the user's input or configuration; the message says what and where.

    A ``ValueError`` subclass, so callers that catch ``ValueError`` keep working.
    """
