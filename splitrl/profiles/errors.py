"""One error type for every bad profile input, always naming the file, the field and the fix."""

from __future__ import annotations


class ProfileError(ValueError):
    """A profile file (or a request for one) is wrong.

    The message reads `<file>: <field> = <value>: <what is expected>; <what to do>`, so a user can fix
    the file without reading code.
    """

    def __init__(self, file: object, field: str, value: object, expected: str, fix: str = "fix the file"):
        self.file, self.field, self.value, self.expected, self.fix = str(file), field, value, expected, fix
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{self.file}: {field} = {shown}: {expected}; {fix}")
