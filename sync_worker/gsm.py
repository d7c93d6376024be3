"""The GSM 7-bit default alphabet (3GPP TS 23.038, formerly GSM 03.38).

A "7-bit" SMS can carry only these characters: the 128 of the basic set, each one
septet, and the extension table's characters, each two septets (an escape first).
A message of 160 septets fills one SMS; anything else must be sent as 8-bit.
"""

from __future__ import annotations

from typing import Final

# The basic character set in code order (0x00..0x7F); 0x1B is the escape to the extension table.
_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# The extension table characters every phone renders (form feed is a page break).
_EXTENSION: Final = "\f^{}\\[~]|€"

BASIC_SET: Final = frozenset(_BASIC) - {"\x1b"}
EXTENSION_SET: Final = frozenset(_EXTENSION)


def septets(text: str) -> int:
    """How many septets ``text`` takes in the GSM 7-bit alphabet; ``ValueError`` naming the first misfit."""
    count = 0
    for position, char in enumerate(text):
        if char in BASIC_SET:
            count += 1
        elif char in EXTENSION_SET:
            count += 2
        else:
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
                "GSM 7-bit alphabet"
            )
    return count
