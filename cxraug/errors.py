"""User-facing errors.

Every problem caused by the user's input (a bad CSV, a missing file, an impossible option) is raised
as :class:`CxrError` with a one-line message that names the file and the fix. The CLI prints it as
``error: ...`` and exits with status 2, never with a traceback.
"""

from __future__ import annotations


class CxrError(Exception):
    """An error the user can fix; its message is shown as is, on one line."""

    exit_code = 2
