"""The ``--dictionaries`` spec grammar, and a loaded set written back as a spec. Torch-free.

Grammar: ``none`` (component level), ``neurons`` (identity dictionaries), or ``PART ('+' PART)*`` with
``PART = [PREFIX ':'] TARGET ['@' OPTION (',' OPTION)*]``: PREFIX one of the format table's prefixes
(:mod:`.formats`), OPTION ``key=value`` (the options the format takes, e.g. ``l0=50``, ``width=16k``) or a
bare string that keeps only SAE ids / subfolders containing it. A spec without any prefix is one part
whose target is a folder or a known name (``organism``, a published set, a hub repo id); its format is
detected from the files.

Every dictionary loaded through a spec records its part in canonical form (local targets made absolute) in
``source.spec``; :func:`spec_of` joins them, so a circuit records exactly the spec that reloads its set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..registry import NEURONS, NO_DICTIONARIES, ORGANISM, PUBLISHED_DICTIONARIES
from .formats import FORMATS, prefixes

SEPARATOR = "+"


@dataclass(frozen=True)
class SpecPart:
    """One part of a spec: ``[prefix:]target[@options]``."""

    prefix: str | None  # None: a folder or known name, its format detected
    target: str
    options: dict = field(default_factory=dict)
    select: str | None = None  # a bare option: keep only SAE ids / subfolders containing it

    @property
    def format(self) -> str | None:
        return prefixes()[self.prefix].name if self.prefix else None

    @property
    def is_known_name(self) -> bool:
        """``organism``, a published set or a hub repo id (resolved by :mod:`.hub`), not a local path."""
        if self.target == ORGANISM or self.target in PUBLISHED_DICTIONARIES:
            return True
        path = Path(self.target).expanduser()
        return (not path.exists() and "/" in self.target and len(path.parts) == 2
                and not self.target.startswith((".", "~", "/")))

    def text(self) -> str:
        opts = [f"{k}={v}" for k, v in self.options.items()] + ([self.select] if self.select else [])
        head = f"{self.prefix}:{self.target}" if self.prefix else self.target
        return head + (f"@{','.join(opts)}" if opts else "")

    def canonical(self) -> SpecPart:
        """The same part with a local target made absolute (names and release ids unchanged)."""
        path = Path(self.target).expanduser()
        if self.is_known_name or not path.exists():
            return self
        return SpecPart(self.prefix, str(path.resolve()), dict(self.options), self.select)


def _has_prefix(text: str) -> bool:
    return any(text.startswith(p + ":") or f"{SEPARATOR}{p}:" in text for p in prefixes())


def _options(chunk: str, prefix: str, opts: str) -> tuple[dict, str | None]:
    allowed = FORMATS[prefixes()[prefix].name].options
    options, select = {}, None
    for opt in filter(None, opts.split(",")):
        key, eq, value = opt.partition("=")
        if not eq:
            select = opt
            continue
        if key not in allowed:
            valid = ", ".join(f"{k}=<value>" for k in allowed) or "none (only a bare string selecting SAE ids)"
            raise ValueError(f"unknown option {key!r} in {chunk!r}; options of {prefix}: {valid}")
        if key == "l0":
            try:
                float(value)
            except ValueError:
                raise ValueError(f"l0 must be a number in {chunk!r}, got {value!r}") from None
        options[key] = value
    return options, select


def parse_spec(spec: str | Path) -> list[SpecPart]:
    """The parts of a spec (see the module docstring); errors name the part and list the prefixes."""
    if isinstance(spec, Path) or not _has_prefix(str(spec)):
        return [SpecPart(None, str(spec))]
    parts = []
    for chunk in str(spec).split(SEPARATOR):
        prefix, sep, rest = chunk.partition(":")
        if not sep or prefix not in prefixes():
            raise ValueError(f"dictionaries spec part {chunk!r} does not start with a format; write PREFIX:TARGET "
                             f"with PREFIX one of {', '.join(prefixes())}, parts joined by '{SEPARATOR}'")
        target, _, opts = rest.partition("@")
        if not target:
            raise ValueError(f"dictionaries spec part {chunk!r} names no folder or release after '{prefix}:'")
        parts.append(SpecPart(prefix, target, *_options(chunk, prefix, opts)))
    return parts


def format_spec(parts: list[SpecPart]) -> str:
    """Parts back to one spec string (``parse_spec(format_spec(p)) == p``)."""
    if len(parts) == 1 and parts[0].prefix is None:
        return parts[0].target
    return SEPARATOR.join(p.text() for p in parts)


def is_special(spec) -> bool:
    """``none`` or ``neurons``: no files are read."""
    return str(spec) in (NO_DICTIONARIES, NEURONS)


def local_paths(spec) -> list[Path]:
    """The local files and folders a spec reads (that exist): what a run must never write over."""
    if spec is None or is_special(spec):
        return []
    from ..paths import DICTIONARY_ROOT

    out = []
    for part in parse_spec(spec):
        path = Path(part.target).expanduser()
        if part.target == ORGANISM or part.target in PUBLISHED_DICTIONARIES:
            path = DICTIONARY_ROOT / part.target
        if path.exists():
            out.append(path)
    return out


def spec_of(dictionaries: dict) -> str | None:
    """The spec that loads ``dictionaries`` again: the canonical parts their sources record, in order;
    ``neurons`` for the neuron baseline; None where a dictionary was built in memory (no spec records it)."""
    if not dictionaries:
        return NO_DICTIONARIES
    sources = [ae.source for ae in dictionaries.values()]
    if all(s.format == NEURONS for s in sources):
        return NEURONS
    specs = [getattr(s, "spec", "") for s in sources]
    if not all(specs):
        return None
    return SEPARATOR.join(dict.fromkeys(specs))
