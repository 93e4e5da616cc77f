"""A tiny template grammar: rules map to alternatives, alternatives name other rules as `{rule}`.

Alternatives are chosen uniformly; an empty alternative makes a part optional. Expansion is deterministic
for a given `random.Random` state.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

Grammar = Mapping[str, Sequence[str]]

SLOT = re.compile(r"\{(\w+)\}")
WORD = re.compile(r"[A-Za-z']+")
SPACES = re.compile(r"\s+")
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,?.!])")
COMMAS = re.compile(r",+")


def check(grammar: Grammar, start: str) -> None:
    """Every referenced rule exists, every rule is reachable from `start`, and nothing recurses."""
    for rule, alternatives in grammar.items():
        if not alternatives:
            raise ValueError(f"rule {rule!r} has no alternatives")
        for alternative in alternatives:
            for name in SLOT.findall(alternative):
                if name not in grammar:
                    raise ValueError(f"rule {rule!r} refers to the unknown rule {name!r}")
    reachable = _reachable(grammar, start, ())
    unused = sorted(set(grammar) - reachable)
    if unused:
        raise ValueError(f"rules not reachable from {start!r}: {unused}")


def _reachable(grammar: Grammar, rule: str, path: tuple[str, ...]) -> set[str]:
    if rule in path:
        raise ValueError(f"recursive rule: {' -> '.join((*path, rule))}")
    found = {rule}
    for alternative in grammar[rule]:
        for name in SLOT.findall(alternative):
            found |= _reachable(grammar, name, (*path, rule))
    return found


# a rule's alternatives parsed once: each as (its literal text around the slots, the slots' rule names, the
# probability of choosing it); corpora expand millions of times
Choice = tuple[tuple[str, ...], tuple[str, ...], float]
CompiledGrammar = Mapping[str, tuple[Choice, ...]]


def compile_grammar(grammar: Grammar) -> CompiledGrammar:
    """A choice's probability counts every copy of the chosen alternative (a rule lists "" four times to make a part
    optional four times in ten)."""
    return {rule: tuple((*_parse(alternative), alternatives.count(alternative) / len(alternatives))
                        for alternative in alternatives)
            for rule, alternatives in grammar.items()}


def expand(grammar: CompiledGrammar, rule: str, rng: random.Random) -> str:
    return expand_with_probability(grammar, rule, rng)[0]


def expand_with_probability(grammar: CompiledGrammar, rule: str, rng: random.Random) -> tuple[str, float]:
    """A random expansion and the probability of the choices that made it (of this derivation): the probability of
    drawing these texts rule by rule. The draws are those of rng.choice over the rule's alternatives."""
    literals, names, probability = rng.choice(grammar[rule])
    if not names:
        return literals[0], probability
    parts = [literals[0]]
    for name, literal in zip(names, literals[1:]):
        text, p = expand_with_probability(grammar, name, rng)
        parts += (text, literal)
        probability *= p
    return "".join(parts), probability


def _parse(alternative: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The literal text around an alternative's slots and the slots' rule names (one more literal than names)."""
    pieces = SLOT.split(alternative)
    return tuple(pieces[0::2]), tuple(pieces[1::2])


def finish(text: str) -> str:
    """Tidy spacing around punctuation, capitalize the first letter, end with a full stop unless punctuated."""
    text = SPACES.sub(" ", text).strip()
    text = SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    text = COMMAS.sub(",", text).strip(" ,")
    if not text.endswith(("?", ".", "!")):
        text += "."
    return text[0].upper() + text[1:]


def vocabulary(grammar: Grammar) -> set[str]:
    """Every word the grammar can produce, lowercased (the literal text of all alternatives)."""
    words = set()
    for alternatives in grammar.values():
        for alternative in alternatives:
            # "{name}'s" leaves "'s", a suffix rather than a word
            words.update(w.lower() for w in WORD.findall(SLOT.sub(" ", alternative)) if not w.startswith("'"))
    return words
