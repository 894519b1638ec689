"""Domain errors shared by the packages; the API maps each to one HTTP status (api/errors.py), the CLI to its message."""


class NotFoundError(LookupError):
    """Something named by the caller does not exist (or lies outside what the caller reaches)."""


class UnknownCollectionError(NotFoundError):
    """No collection of that name."""

    def __init__(self, name: str):
        super().__init__(f"no collection named '{name}'")
        self.name = name
