"""Training configuration files (TOML) shipped with the package."""

from pathlib import Path

DEFAULT_CONFIG: Path = Path(__file__).resolve().parent / "default.toml"
"""The default training recipe used by ``palletreid train`` without ``--config``."""
