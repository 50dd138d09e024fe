"""One module per CLI verb, each defining `command` (typer); heavy imports stay inside the function."""
