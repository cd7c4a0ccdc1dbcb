"""Families by name, and the parsing of family and style selections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.synth.families.chipsplat import ChipsplatFamily
from models.synth.families.flakepress import FlakepressFamily
from models.synth.family import SynthFamily

FAMILIES: dict[str, SynthFamily[Any, Any]] = {
    family.name: family for family in (ChipsplatFamily(), FlakepressFamily())
}
DEFAULT_FAMILY = "chipsplat"  # the first generator: what commands without --family have always produced
ALL = "all"


def get_family(name: str) -> SynthFamily[Any, Any]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}") from None


def parse_families(text: str | None) -> tuple[str, ...]:
    """A comma-separated family list; ``None`` or empty: the default family; ``all``: every family."""
    if not text:
        return (DEFAULT_FAMILY,)
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if ALL in names:
        return tuple(FAMILIES)
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown family {unknown or text!r}; choose from {', '.join(FAMILIES)} or {ALL}")
    return names


def parse_styles(text: str | None) -> tuple[str, ...]:
    """A comma-separated style list (``None`` or empty: every style of each family), checked later."""
    if not text:
        return ()
    return tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def styles_of(family: str, styles: Sequence[str]) -> tuple[str, ...]:
    """The station styles ``family`` draws from: all of its own when ``styles`` is empty, else its share.

    Names of other families' styles are ignored here (``family_styles`` checks a whole selection).
    """
    own = tuple(get_family(family).styles)
    if not styles:
        return own
    chosen = tuple(style for style in styles if style in own)
    if not chosen:
        raise ValueError(
            f"none of the styles {', '.join(styles)} belongs to family {family} ({', '.join(own)})"
        )
    return chosen


def family_styles(families: Sequence[str], styles: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``styles_of`` for every family of a selection; style names are unique across families.

    Raises ``ValueError`` for unknown names and for a family that would be left without any style.
    """
    known = {style for name in families for style in get_family(name).styles}
    unknown = [style for style in styles if style not in known]
    if unknown:
        raise ValueError(
            f"unknown style(s) {unknown} for {', '.join(families)}; choose from {', '.join(sorted(known))}"
        )
    return {name: styles_of(name, styles) for name in families}
