"""Command-line entry points of the model side (``palletreid synth|train|evaluate``).

Each module exposes ``register(subparsers)``, which adds one subcommand whose parser sets
``handler`` to a function taking the parsed ``argparse.Namespace`` and returning an exit code.
"""
