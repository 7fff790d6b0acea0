"""One grammar for durations and sizes: command-line flags, the daemon's configuration and retention.

Durations are a number and a unit, repeated: ``90s``, ``15m``, ``1h30m``, ``1.5h``, ``1d``, ``2w``, and
Go's (etcdctl's) forms ``500ms``, ``2s``, ``250us``/``250µs``, ``100ns``, so ``--dial-timeout`` and
``--command-timeout`` take what etcdctl takes. Units: ``ns us µs ms s m h d w`` (``d`` = 24 h, ``w`` = 7 d;
case matters: ``m`` is minutes). A bare number is an error that suggests the unit (``90`` → "did you mean
90s?"), except ``0``, which needs none (as in Go). Negative, non-finite and absurdly long values (over
100 years) are refused.

Sizes are a number and a unit: ``100MiB``, ``10GiB``, ``1.5GB``, ``512KiB``; binary units ``KiB MiB GiB TiB
PiB`` (also Kubernetes' ``Ki Mi Gi Ti Pi``), decimal units ``B kB KB MB GB TB PB``. A bare number is an
error that suggests a unit, except for settings whose name says bytes (``--db-quota-bytes``,
``dbQuotaBytes``: ``bare_bytes=True``). At most 1 EiB.

Errors are :class:`UnitError` (a ``ValueError``), whose message names the value and not the setting: the
caller prefixes the flag or configuration key.
"""

from __future__ import annotations

import math
import re

MAX_DURATION = 100 * 365.25 * 86400.0  # 100 years, in seconds
MAX_SIZE = 1024**6  # 1 EiB
GIB = 1024**3

DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "d": 86400.0, "w": 604800.0,
}
SIZE_UNITS: dict[str, int] = {
    "B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "PB": 1000**5,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4, "PiB": 1024**5,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5,
}
DURATION_EXAMPLES = "e.g. 90s, 15m, 1h30m, 1d, 2w, 500ms"
SIZE_EXAMPLES = "e.g. 100MiB, 10GiB, 1.5GB"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_TERM = re.compile(rf"({_NUMBER})([^\d.]*)")
_BARE = re.compile(rf"{_NUMBER}")
_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")


class UnitError(ValueError):
    """A duration or size that does not parse or is out of range (the message names the value)."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def parse_duration(value: object) -> float:
    """``"90s"`` / ``"1h30m"`` / ``"1d"`` / ``"500ms"`` → seconds (a float). Raises :class:`UnitError`.

    A number (a YAML ``90``) or a bare numeric string is an error suggesting the unit, except zero."""
    if _is_number(value):
        assert isinstance(value, (int, float))
        if not math.isfinite(value):
            raise UnitError(f"{value} is not a duration: use a number and a unit ({DURATION_EXAMPLES})")
        if value == 0:
            return 0.0
        if value < 0:
            raise UnitError(f"{_number_text(value)}: a duration cannot be negative")
        raise UnitError(f"{_number_text(value)} has no unit; did you mean {_number_text(value)}s? "
                        f"({DURATION_EXAMPLES})")
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a duration ({DURATION_EXAMPLES})")
    text = value.strip()
    if not text:
        raise UnitError(f"an empty duration; use a number and a unit ({DURATION_EXAMPLES})")
    if text.startswith("-"):
        raise UnitError(f"{value!r}: a duration cannot be negative")
    if text.startswith("+"):
        text = text[1:]
    if _BARE.fullmatch(text):
        if float(text) == 0:
            return 0.0
        raise UnitError(f"{text} has no unit; did you mean {text}s? ({DURATION_EXAMPLES})")
    total = 0.0
    pos = 0
    for m in _TERM.finditer(text):
        if m.start() != pos:
            break
        unit = m.group(2)
        if unit not in DURATION_UNITS:
            hint = f"unknown unit {unit!r}" if unit else "a number without a unit"
            raise UnitError(f"invalid duration {value!r}: {hint}; units are ns, us, ms, s, m, h, d, w "
                            f"({DURATION_EXAMPLES})")
        total += float(m.group(1)) * DURATION_UNITS[unit]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise UnitError(f"invalid duration {value!r}; use a number and a unit ({DURATION_EXAMPLES})")
    if not math.isfinite(total) or total > MAX_DURATION:
        raise UnitError(f"{value!r} is too long: a duration is at most 100 years")
    return total


def format_duration(seconds: float) -> str:
    """The shortest form :func:`parse_duration` reads back: ``5400`` → ``1h30m``, ``0.5`` → ``500ms``,
    ``604800`` → ``1w``, ``0`` → ``0s``."""
    if seconds < 0 or not math.isfinite(seconds):
        raise UnitError(f"{seconds} is not a duration")
    if seconds == 0:
        return "0s"
    if seconds != int(seconds):
        whole = int(seconds)
        rest = seconds - whole
        if whole == 0:
            for unit, scale in (("ms", 1e3), ("us", 1e6), ("ns", 1e9)):
                if rest * scale >= 1 or unit == "ns":
                    return f"{rest * scale:g}{unit}"
        return (format_duration(whole - whole % 60) if whole >= 60 else "") + f"{whole % 60 + rest:g}s"
    rest, out = int(seconds), ""
    if rest % 604800 == 0:
        return f"{rest // 604800}w"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out


def parse_size(value: object, *, bare_bytes: bool = False) -> int:
    """``"100MiB"`` / ``"10GiB"`` / ``"1.5GB"`` → bytes. Raises :class:`UnitError`.

    ``bare_bytes``: a number without a unit is bytes (for settings named ``...-bytes``); otherwise it is an
    error suggesting a unit."""
    if _is_number(value):
        assert isinstance(value, (int, float))
        if not math.isfinite(value):
            raise UnitError(f"{value} is not a size: use a number and a unit ({SIZE_EXAMPLES})")
        if value < 0:
            raise UnitError(f"{_number_text(value)}: a size cannot be negative")
        if not bare_bytes and value != 0:
            raise UnitError(_size_hint(_number_text(value)))
        if value != int(value):
            raise UnitError(f"{_number_text(value)} is not a whole number of bytes")
        return _bounded(int(value), str(value))
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a size ({SIZE_EXAMPLES})")
    text = value.strip()
    if text.startswith("-"):
        raise UnitError(f"{value!r}: a size cannot be negative")
    m = _SIZE.fullmatch(text)
    if not m:
        raise UnitError(f"invalid size {value!r}; use a number and a unit ({SIZE_EXAMPLES})")
    from decimal import Decimal, InvalidOperation  # here: every command imports this module, few parse a size

    number, unit = m.group(1), m.group(2)
    if not unit:
        if bare_bytes or Decimal(number) == 0:
            unit = "B"
        else:
            raise UnitError(_size_hint(number))
    if unit not in SIZE_UNITS:
        raise UnitError(f"invalid size {value!r}: unknown unit {unit!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB, "
                        f"TiB ({SIZE_EXAMPLES})")
    try:
        exact = Decimal(number) * SIZE_UNITS[unit]
    except InvalidOperation:
        raise UnitError(f"invalid size {value!r} ({SIZE_EXAMPLES})") from None
    if exact > MAX_SIZE:
        raise UnitError(f"{value!r} is too large: a size is at most 1024PiB")
    return int(exact)


def _size_hint(number: str) -> str:
    from decimal import Decimal

    if Decimal(number) >= 1024**2 and Decimal(number) == int(Decimal(number)):
        n = int(Decimal(number))
        guess = f"{number}B ({format_size(n)})" if n <= MAX_SIZE else f"{number}B"
    else:
        guess = f"{number}GiB or {number}MiB"
    return f"{number} has no unit; did you mean {guess}? ({SIZE_EXAMPLES})"


def _bounded(n: int, text: str) -> int:
    if n > MAX_SIZE:
        raise UnitError(f"{text} is too large: a size is at most 1024PiB")
    return n


def parse_gib(value: object) -> int:
    """A positive, finite number of GiB (``10``, ``0.5``; ``--max-size-gib``, ``maxSizeGiB``) → bytes."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise UnitError(f"{value!r} is not a number of GiB (e.g. 10 or 0.5)") from None
    elif _is_number(value):
        assert isinstance(value, (int, float))
        number = float(value)
    else:
        raise UnitError(f"{value!r} is not a number of GiB (e.g. 10 or 0.5)")
    if not math.isfinite(number):
        raise UnitError(f"{value} is not a finite number of GiB")
    if number <= 0:
        raise UnitError(f"{value}: the number of GiB must be more than 0")
    if number * GIB > MAX_SIZE:
        raise UnitError(f"{value} GiB is too large: a size is at most 1024PiB")
    return max(1, int(number * GIB))


def format_size(n: int) -> str:
    """Bytes in the largest binary unit that keeps it short and exact to 0.01: ``10GiB``, ``1.5MiB``, ``999B``."""
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
        size = SIZE_UNITS[unit]
        if n >= size:
            v = n / size
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.2f}".rstrip("0").rstrip(".") + unit
    return f"{n}B"
