"""Where the CLI writes: results to stdout, warnings and errors to stderr."""

from rich.console import Console

console = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole in logs and greps
