"""BraNet's offline phase: `python -m training <command> --help`."""
