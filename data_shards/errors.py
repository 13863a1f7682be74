"""The one exception type the data layer raises for problems a user can fix."""


class DataError(Exception):
    """One-line, user-facing problem with the data or its config."""
