"""Service-side subcommands of the ``palletreid`` CLI."""
