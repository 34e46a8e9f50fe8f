"""Names that spaCy's small model misses because of their case: lowercase in chat and
quick notes ("patient john smith", "spoke to maria"), all capitals in forms and
headers ("PT: JANE DOE").

Why our own: the NER model learnt names from capitalised text, and Presidio has no
recognizer for a name's spelling. A word is taken for a name here when it is in
the given-name or family-name lists that Faker ships for its ~80 locales
(:func:`name_lists`: ~31,000 given names, ~28,000 family names, from many
cultures) and is not a common English word (spaCy's stop words and Faker's list of
~1,000 common English words: "will", "may", "can", "back" are names too). Then:

- ``lowercase-after-cue``: after a word that introduces a person ("patient",
  "spoke to", "call me", "it's", "thanks", "wife", "cc", ...), one to three
  lowercase words: a given name, then family names; ``title-after-cue``: the
  same, capitalised, after these cues or "and", "with", "to", "for", "by", "from";
- ``any-after-title``: after "Mr", "Dr", "Ms", ... one to three words that are
  not common words, in any case ("mr okafor", "DR. M. OYELARAN");
- ``capitals``: two or three all-capital words, a given name then a family name
  ("JANE DOE"), or all-capital words after a cue ("PATIENT: ROBERT KING");
- ``given-family``: a capitalised given name followed by a capitalised family
  name ("Oluwaseun Adeyemi"), both from the lists, neither a common word.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Any

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult

__all__ = [
    "NameListRecognizer",
    "is_common_word",
    "is_given_name",
    "name_lists",
    "name_recognizers",
]


@lru_cache(maxsize=1)
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, family names) of every Faker locale, case-folded."""
    import faker.providers.person as person

    given: set[str] = set()
    family: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        try:
            provider = importlib.import_module(f"{person.__name__}.{module.name}")
        except ImportError:  # a locale module that needs what is not installed
            continue
        names = vars(provider.Provider)
        for attribute, target in (
            ("first_names", given),
            ("first_names_male", given),
            ("first_names_female", given),
            ("first_romanized_names", given),
            ("last_names", family),
            ("last_romanized_names", family),
        ):
            value = names.get(attribute)
            if isinstance(value, list | tuple | set | frozenset | dict):
                target.update(str(n).casefold() for n in value)
    return frozenset(given), frozenset(family)


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    from faker.providers.lorem.en_US import Provider as Lorem
    from spacy.lang.en.stop_words import STOP_WORDS

    months = (
        "january february march april may june july august september october "
        "november december monday tuesday wednesday thursday friday saturday sunday"
    ).split()
    return frozenset(
        {w.casefold() for w in Lorem.word_list} | set(STOP_WORDS) | set(months)
    )


def is_common_word(word: str) -> bool:
    return word.casefold() in _common_words()


def is_given_name(word: str) -> bool:
    """A given name of the lists that is not a common English word; of a
    hyphenated one ("Marc-André"), the first part."""
    w = word.casefold().strip("'’")
    first = w.split("-")[0]
    return len(first) > 1 and first in name_lists()[0] and not is_common_word(first)


def _family(word: str) -> bool:
    w = word.casefold()
    names = name_lists()
    return len(w) > 1 and (w in names[1] or w in names[0]) and not is_common_word(w)


_CUE = (
    r"(?i:\bpatient|\bpt\b\.?|\bname\s*(?:is|:)|\bnamed|\bcalled|\bcall\s+me|\bi'?m"
    r"|\bi\s+am|\bit'?s|\bthis\s+is|\b(?:spoke|talked|speak|talk|chat(?:ted)?)"
    r"\s+(?:to|with)|\bask(?:ed)?|\btell|\btold|\bping(?:ed)?|\bcc:?|\bthanks,?"
    r"|\bthank\s+you,?|\bcheers,?|\bregards,?|\bhi|\bhey|\bhello|\bdear|\bwife"
    r"|\bhusband|\bson|\bdaughter|\bmother|\bmom|\bmum|\bfather|\bdad|\bbrother"
    r"|\bsister|\bpartner|\bfriend|\bcolleague|\bmanager|\bboss|\bdr\b\.?"
    r"|\bmrs?\b\.?|\bms\b\.?|\bsigned"
    r"|\b(?:sur|fore|first|last|given|family|full)\s*name\s*:|\bnurse|\bdoctor"
    r"|\bmidwife|\blandlord|\bneighbou?r|\baunt(?:y|ie)?|\buncle|\bcousin"
    r"|\bgrand(?:ma|pa|mother|father)|\bits|\btext|\bcall|\bring|\bmessage|\bdm)"
)
# words that often precede a capitalised name, too common to trust before a
# lowercase one ("life and love", "with grace")
_WEAK_CUE = r"(?i:\bfrom|\bto|\bwith|\band|\bby|\bfor)"
# a title makes what follows a name, whatever its case: "mr okafor", "DR. M. OYELARAN"
_TITLE_CUE = r"(?i:\b(?:mr|mrs|ms|mx|miss|dr|prof))\.?"
_LOWER = r"\p{Ll}[\p{Ll}'’-]*"
_CAPS = r"\p{Lu}[\p{Lu}'’-]+"
_TITLE = r"\p{Lu}\p{Ll}[\p{Ll}'’-]*"
_PATTERNS = [
    (
        "lowercase-after-cue",
        _CUE + r"[\s(:,]+(?P<pii>" + _LOWER + r"(?:[ ]+" + _LOWER + r"){0,2})",
        0.75,
    ),
    (
        "capitals-after-cue",
        _CUE + r"[\s(:,]+(?P<pii>" + _CAPS + r"(?:[ ]+" + _CAPS + r"){0,2})",
        0.85,
    ),
    (
        "title-after-cue",
        r"(?:"
        + _CUE
        + "|"
        + _WEAK_CUE
        + r")[\s(:,]+(?P<pii>"
        + _TITLE
        + r"(?:[ ]+"
        + _TITLE
        + r"){0,2})",
        0.8,
    ),
    (
        "any-after-title",
        _TITLE_CUE + r"\s+(?P<pii>(?:\p{Lu}\.\s*)?[\p{L}'’-]+(?:[ ]+[\p{L}'’-]+){0,2})",
        0.85,
    ),
    (
        "capitals",
        r"(?<![\p{L}\d])(?P<pii>" + _CAPS + r"(?:[ ]+" + _CAPS + r"){1,2})",
        0.85,
    ),
    ("given-family", r"(?<![\p{L}\d])(?P<pii>" + _TITLE + r"[ ]+" + _TITLE + r")", 0.8),
]
_COMPILED = [(n, regex.compile(p), s) for n, p, s in _PATTERNS]


def _name_words(words: list[str], *, cue: bool, title: bool = False) -> int:
    """How many of ``words`` (from the first) form a name: a given name first,
    then family names; without a cue, at least a given and a family name. After a
    title, any words that are not common English words (an initial first)."""
    if title:
        n = 0
        while n < len(words) and regex.fullmatch(r"\p{Lu}\.", words[n]):
            n += 1  # initials
        first = n
        while n < len(words) and not is_common_word(words[n].strip("'’,.")):
            word = words[n]
            # after the first word: capitalised like it, or a name from the lists
            same = word[:1].isupper() and words[first][:1].isupper()
            if n > first and not (same or _family(word)):
                break
            n += 1
        return n if n > first else 0
    if not words or not is_given_name(words[0]):
        return 0
    n = 1
    while n < len(words) and _family(words[n]):
        n += 1
    if not cue and n < 2:
        return 0
    return n


class NameListRecognizer(EntityRecognizer):  # type: ignore[misc]
    """PERSON from the name lists, in lowercase, in capitals, or given + family."""

    def __init__(self) -> None:
        super().__init__(
            supported_entities=["PERSON"],
            name="FedshieldNameLists",
            supported_language="en",
        )

    def load(self) -> None:  # the lists load on first use
        return None

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        if entities and "PERSON" not in entities:
            return []
        found = []
        for pattern_name, pattern, score in _COMPILED:
            cue = "after-cue" in pattern_name
            title = pattern_name == "any-after-title"
            for match in pattern.finditer(text, overlapped=not (cue or title)):
                start = match.start("pii")
                words = list(regex.finditer(r"[^\s]+", match.group("pii")))
                n = _name_words([w.group() for w in words], cue=cue, title=title)
                if not n:
                    continue
                end = start + words[n - 1].end()
                found.append(
                    RecognizerResult(
                        entity_type="PERSON",
                        start=start,
                        end=end,
                        score=score,
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: "FedshieldNameLists",
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                            "pattern": pattern_name,
                        },
                    )
                )
        return found


def name_recognizers() -> list[EntityRecognizer]:
    return [NameListRecognizer()]
