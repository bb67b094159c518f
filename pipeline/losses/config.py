"""LossConfig: the YAML section ``loss:`` — a list of weighted terms (a preset file of configs/loss/) and their options.

``loss.preset: NAME`` merges ``configs/loss/NAME.yaml`` (its ``terms`` list) under the section when the
config loads (pipeline.config). Each entry of ``terms`` is ``{term, weight}`` (a registered term, see
pipeline.losses.registry) or ``{group, weight, terms}`` (the weighted sum of its sub-terms, then
weighted). A term's options are ``loss.options.<term>`` (defaults in configs/pretrain/base.yaml) with
the entry's own ``options`` merged over them; ``loss.weights.<name>`` replaces an entry's weight.
An entry of weight 0 is switched off (not computed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config import ConfigError, config_from_dict, deep_merge
from pipeline.losses.registry import registered_terms, term_class


@dataclass
class TermSpec:
    """One entry of ``loss.terms``: a term, or a named group of terms, with its weight."""

    weight: float
    term: Optional[str] = None  # a registered term name (infonce, sia, sta_token, sta_image, ...)
    group: Optional[str] = None  # or a group's name: its value is the weighted sum of ``terms``
    terms: Optional[list[TermSpec]] = None
    options: dict[str, Any] = field(default_factory=dict)  # merged over loss.options.<term>

    def __post_init__(self) -> None:
        if (self.term is None) == (self.group is None):
            raise ValueError(f"a loss.terms entry needs exactly one of 'term' and 'group', got {self._label()}")
        if self.group is not None and not self.terms:
            raise ValueError(f"loss group {self.group!r} needs a non-empty 'terms' list")
        if self.term is not None and self.terms is not None:
            raise ValueError(f"loss term {self.term!r}: only a group has 'terms'")
        if self.group is not None and self.options:
            raise ValueError(f"loss group {self.group!r}: options belong to its terms")
        if self.weight < 0:
            raise ValueError(f"loss term {self.name!r}: weight must be >= 0, got {self.weight}")
        if self.term is not None:
            term_class(self.term)  # unknown names fail here, listing the known ones

    def _label(self) -> str:
        return f"term={self.term!r}, group={self.group!r}"

    @property
    def name(self) -> str:
        """The entry's name: its term or group name (the prefix of its logged scalars)."""
        return self.term if self.term is not None else self.group


def walk(specs: list[TermSpec]) -> Iterator[TermSpec]:
    """Every entry of a terms list, groups before their members, in order."""
    for spec in specs:
        yield spec
        if spec.terms:
            yield from walk(spec.terms)


@dataclass
class LossConfig:
    """The training objective: which terms with which weights, and each term's options."""

    terms: list[TermSpec]
    options: dict[str, dict[str, Any]]  # per term name; configs/pretrain/base.yaml holds every default
    weights: dict[str, float] = field(default_factory=dict)  # per entry name, replacing the entry's weight
    preset: Optional[str] = None  # a file of configs/loss/ merged under this section (see pipeline.config)

    def __post_init__(self) -> None:
        names = [spec.name for spec in walk(self.terms)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"loss.terms: names {repeated} appear twice (scalars are logged by name)")
        known = set(registered_terms())
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise ValueError(f"loss.options: {unknown} are not loss terms (known: {', '.join(sorted(known))})")
        for name, weight in self.weights.items():
            if weight < 0:
                raise ValueError(f"loss.weights.{name} must be >= 0, got {weight}")
        listed = {s.term for s in walk(self.terms) if s.term}
        for term in sorted(set(self.options) - listed):
            self.term_options(term)  # checks the shared options even of terms this preset leaves out
        for spec in walk(self.terms):
            if spec.term is not None:
                self.term_options(spec.term, spec.options)

    def weight(self, spec: TermSpec) -> float:
        """The entry's weight after ``loss.weights``."""
        return self.weights.get(spec.name, spec.weight)

    def term_options(self, term: str, own: dict[str, Any] | None = None) -> Any:
        """The typed options of ``term``: ``loss.options.<term>`` with an entry's own options merged over them."""
        cls = term_class(term)
        tree = deep_merge(self.options.get(term, {}), own or {}, f"loss.terms ({term}).options")
        try:
            return config_from_dict(cls.Options, tree, f"loss.options.{term}")
        except ConfigError as err:
            raise ValueError(f"options of loss term {term!r}: {err}") from err
