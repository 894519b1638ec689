"""`python -m cli`: the same command line as the `citeloop` script."""

from cli import app

app(prog_name="citeloop")
