"""GS1 keys the service accepts: SSCC (a load) and GRAI (a returnable asset such as a pallet).

Check digits follow the GS1 General Specifications (mod 10, weights 3 and 1 from the right); a key whose last
digit is not its check digit is refused, so a mistyped or misread code never enters the history. Digital
Link URIs (``https://id.gs1.org/<AI>/<key>``) are how EPCIS 2.0 names such objects.
"""

from __future__ import annotations

import re
from urllib.parse import quote

DIGITAL_LINK_BASE = "https://id.gs1.org"
SSCC_AI = "00"
GRAI_AI = "8003"

_SSCC = re.compile(r"[0-9]{18}")
_GRAI = re.compile(r"(0[0-9]{13})([!\"%-/0-9:-?A-Z_a-z]{1,16})")
"""A GRAI with its serial: "0", 12 digits, the check digit, then 1..16 characters of GS1 character set 82."""


def check_digit(digits: str) -> int:
    """The GS1 mod-10 check digit of ``digits`` (all but the check digit)."""
    total = sum(int(digit) * (3 if index % 2 == 0 else 1) for index, digit in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def _verify_check_digit(name: str, digits: str) -> None:
    expected = check_digit(digits[:-1])
    if int(digits[-1]) != expected:
        raise ValueError(
            f"{name} {digits} has check digit {digits[-1]}, but its first {len(digits) - 1} digits give "
            f"{expected} (mistyped or misread)"
        )


def validate_sscc(value: str) -> str:
    """``value`` if it is an SSCC: 18 digits whose last is the GS1 check digit (else ``ValueError``)."""
    if not _SSCC.fullmatch(value):
        raise ValueError("an SSCC is 18 digits (extension digit, company prefix, serial, check digit)")
    _verify_check_digit("SSCC", value)
    return value


def validate_grai(value: str) -> str:
    """``value`` if it is an individual GRAI: "0" + 12 digits + check digit, then a 1..16-character serial."""
    match = _GRAI.fullmatch(value)
    if match is None:
        raise ValueError(
            "a GRAI is 14 digits starting with 0 (company prefix, asset type, check digit) followed by a "
            "serial of 1 to 16 characters (letters, digits or !\"%&'()*+,-./:;<=>?_), as in AI (8003)"
        )
    _verify_check_digit("GRAI", match.group(1))
    return value


def grai_digital_link(grai: str) -> str:
    """The GS1 Digital Link URI of an individual GRAI (the serial percent-encoded)."""
    return f"{DIGITAL_LINK_BASE}/{GRAI_AI}/{quote(grai, safe='')}"


def sscc_digital_link(sscc: str) -> str:
    return f"{DIGITAL_LINK_BASE}/{SSCC_AI}/{sscc}"
