"""Recognizers Presidio lacks or gets wrong for English clinical/customer text.

Each recognizer (:class:`~.pattern_recognizer.SpanPatternRecognizer`) is a list of
regular expressions (the ``regex`` module, so ``\\p{Lu}`` matches any upper-case
letter, "Ø" and "Ž" included). A match reports the span of its ``pii`` group when
it has one, so context ("my name is", "aged") helps find a value without being
replaced with it. Scores are above the spaCy recognizer's 0.85 where a pattern is
more reliable than the small model (a phone number that spaCy calls a date is a
phone number).

- ``STREET_ADDRESS``: US and international street lines ("42 Elm Street", "2185
  Søndergade 87", "14 rue La Boétie"), US military addresses ("PSC 3449, Box
  7869 APO AE 63445"), units ("Apt. 415"), and the city / state / postcode /
  country lines that follow a street line.
- ``PERSON`` in context spaCy's small model misses: after a salutation ("Mrs.
  Olaisen"), after "my name is" / "Name:" / "patient", and first-initial-last
  shapes ("Casper L Gustavsson").
- ``ORGANIZATION``: capitalised names ending in a legal-form suffix ("Vaxart Inc.",
  "SIPEF NV"); the small model's own ORG findings are too noisy to use.
- ``DATE_TIME``: written-out dates ("March 3rd, 1985"), numeric and ISO dates and
  timestamps; a finding of any recognizer is kept only if it names a day of a
  month or a month of a year (:func:`is_specific_date`).
- ``AGE``: the number in "45-year-old", "aged 45", "at the age of 45", "turned 45".
- ``US_ZIP_CODE``: after a state abbreviation, or with a context word; Canadian
  postal codes.
- ``US_SSN``: ddd-dd-dddd; Presidio's recognizer invalidates well-known sample
  numbers (078-05-1120) that still identify people in text.
- ``EMAIL_ADDRESS`` on any domain: Presidio's recognizer drops addresses whose
  top-level domain is not on the public-suffix list ("@ward7.hospital.local").
- ``CREDIT_CARD``: 12-19 digits, grouped or not, that pass the Luhn check;
  Presidio's recognizer misses issuer prefixes it does not list (JCB "2131...").
- ``PHONE_NUMBER``: US formats (7-digit local ones too), international numbers
  of 8-20 digits in groups or with a country code or trunk prefix, and any
  number of 6-15 digits after "phone:", "tel", "mobile", "fax"; Presidio's
  ``phonenumbers`` recognizer scores 0.4 and its UK NHS recognizer tags phone
  numbers.

:data:`NOT_ORGANIZATIONS` lists tokens the small spaCy model tags as ORGANIZATION
("SSN", "IBAN", "DOB", ...); they are passed to Presidio as an allow list.

The benchmark that justifies each of these is ``benchmarks/pii.py``.
"""

from __future__ import annotations

import regex
from presidio_analyzer import EntityRecognizer

from .names import is_given_name
from .pattern_recognizer import SpanPatternRecognizer, digits_between, luhn

__all__ = [
    "NOT_ORGANIZATIONS",
    "custom_recognizers",
    "is_ner_noise",
    "is_specific_date",
]

NOT_ORGANIZATIONS = [
    "SSN", "IBAN", "DOB", "MRN", "ZIP", "Zip", "PIN", "IP", "Email", "E-mail",
    "Phone", "Tel", "Fax", "ID", "Card", "Social Security", "Passport",
]  # fmt: skip

# USPS street suffixes (Publication 28, C1) and common abbreviations
_SUFFIXES = (
    "Alley Aly Annex Arcade Avenue Ave Av Bayou Beach Bend Bluff Bluffs Bottom "
    "Boulevard Blvd Branch Bridge Brook Brooks Burg Bypass Camp Canyon Cape "
    "Causeway Center Centre Circle Cir Cliff Cliffs Club Common Corner Corners "
    "Course Court Ct Courts Cove Coves Creek Crescent Cres Crest Crossing Crossroad "
    "Curve Dale Dam Divide Drive Dr Drives Estate Estates Expressway Extension "
    "Falls Ferry Field Fields Flat Flats Ford Fords Forest Forge Forges Fork Forks "
    "Fort Freeway Garden Gardens Gateway Glen Glens Green Greens Grove Groves "
    "Harbor Harbors Haven Heights Highway Hwy Hill Hills Hollow Inlet Island Islands "
    "Isle Junction Key Keys Knoll Knolls Lake Lakes Land Landing Lane Ln Light "
    "Lights Loaf Lock Locks Lodge Loop Mall Manor Manors Meadow Meadows Mews Mill "
    "Mills Mission Motorway Mount Mountain Mountains Neck Orchard Oval Overpass "
    "Park Parks Parkway Pkwy Pass Passage Path Pike Pine Pines Place Pl Plain "
    "Plains Plaza Point Points Port Ports Prairie Radial Ramp Ranch Rapid Rapids "
    "Rest Ridge Ridges River Road Rd Roads Route Row Rue Run Shoal Shoals Shore "
    "Shores Skyway Spring Springs Spur Spurs Square Sq Squares Station Stravenue "
    "Stream Street St Streets Summit Terrace Ter Throughway Trace Track Trafficway "
    "Trail Trl Trailer Tunnel Turnpike Underpass Union Unions Valley Valleys Via "
    "Viaduct View Views Village Villages Ville Vista Walk Walks Wall Way Ways Well "
    "Wells"
).split()
# street words that come first ("Rue de la Paix", "Via Roma") or end a word
# ("Søndergade", "Linzer Strasse", "Pernajantie") in other countries
_LEADING = (
    "rue avenue avenida allée allee chemin via viale vicolo piazza calle carrer "
    "camino paseo plaza rua travessa estrada largo ulica ul aleja utca strada "
    "bulevardul calea"
).split()
_ENDINGS = (
    "straße strasse str gasse weg platz allee ring damm gade vej vænget veien vegen "
    "vei vägen gatan gata gränd väg laan straat plein kade dijk gracht singel tie "
    "katu kuja polku tori rinne stígur vegur gata ova ská ská cesta ulice utca út "
    "centret torv"
).split()

_UP = r"\p{Lu}[\p{L}'’.-]*"  # a capitalised word
_WORD = r"\p{L}[\p{L}'’.-]*"
_NL = r"(?:\\n|\n)"  # texts often carry escaped newlines
_UNIT = (
    r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Fl|Floor|Room|Rm|Box)\.?\s*#?\s*\d+\p{L}?"
)
# the street words people write in lowercase too ("23 ashgrove rd"); any other
# USPS suffix ("Course", "Via", "Path") ends a street only after capitalised words
_COMMON_SUFFIXES = (
    "street st road rd avenue ave lane ln drive close crescent way boulevard blvd "
    "place court ct terrace grove gardens square parkway pkwy highway hwy"
).split()
_UNIT_BEFORE = r"(?:(?i:flat|unit|apt|apartment|suite)\s*\d+\p{L}?,?\s+)?"
_STREET_US = (
    r"\b"
    + _UNIT_BEFORE
    + r"\d{1,6}\p{L}?(?:\s+\d{1,5})?\s+(?:"
    + _WORD
    + r"\s+){0,3}(?:"
    + "|".join(_SUFFIXES + [w.upper() for w in _SUFFIXES])
    + r"|(?i:"
    + "|".join(_COMMON_SUFFIXES)
    + r"))\b\.?(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
)
_STREET_LEADING = (
    r"\b\d{1,6}(?:\s+\d{1,5})?,?\s+(?i:" + "|".join(_LEADING) + r")\.?\s+"
    r"(?=(?:\p{Ll}+\s+){0,3}\p{Lu})"  # a capitalised name follows: not "2023 via email"
    r"(?:" + _WORD + r"\s*){1,4}?(?=[\s,]|$)"
)
_STREET_ENDING = (
    r"(?:\b\d{1,6}\s+)?\b(?:"
    + _UP
    + r"[ -])?\p{L}*(?i:"
    + "|".join(_ENDINGS)
    + r")\b\.?\s+\d{1,5}\p{L}?\b"
)
_MILITARY = (
    r"\b(?:PSC|Unit|CMR)\s+\d{3,5},?\s+Box\s+\d{3,5}\s*" + _NL + r"?,?\s*"
    r"(?:APO|FPO|DPO)\s+A[AEP]\s+\d{5}\b"
    r"|\bUS[NS]V?S?\s+" + _UP + r"\s*" + _NL + r"?\s*FPO\s+A[AEP]\s+\d{5}\b"
)
# what may follow a street line: units, city, state, postcode, country, each after
# a comma or line break (or a space for units and postcodes)
_CONTINUATION = (
    r"(?:(?:\s*(?:,|" + _NL + r")\s*|\s+)" + _UNIT + r"|\s*(?:,|" + _NL + r")\s*"
    r"(?:" + _UP + r"(?:[ -]" + _UP + r"){0,3}(?:\s+\d{4,6}(?:-\d{3,4})?)?"
    r"|\p{Lu}{2}(?:\s+\d{5}(?:-\d{4})?)?|\d{4,6}(?:-\d{3,4})?(?![ .-]?\d)))*"
)

_SALUTATION = r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Mme|Mlle|Herr|Frau)\.?\s+"
_NAME_WORD = r"(?!(?:Apt|Suite|Unit|Phone|Fax|Email|Mobile)\b)\p{Lu}[\p{L}'’-]*"
# names stay on one line and stop at a full stop: "Mr. Eric Laine. Who ..."
_NAME = _NAME_WORD + r"(?:[ ]+\p{Lu}(?:\.|(?=[ ])))?(?:[ ]+" + _NAME_WORD + r"){0,2}"
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|"
    r"Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
# month names of the other languages sites write in (fr, de, es, it, nl, pt)
_FOREIGN_MONTH = (
    r"(?:janvier|février|fevrier|mars|avril|mai|juin|juillet|août|aout|septembre|"
    r"octobre|novembre|décembre|decembre|januar|februar|märz|maerz|juni|juli|"
    r"oktober|dezember|enero|febrero|marzo|mayo|junio|julio|agosto|septiembre|"
    r"octubre|noviembre|diciembre|gennaio|febbraio|aprile|maggio|giugno|luglio|"
    r"settembre|ottobre|dicembre|januari|februari|maart|mei|augustus|"
    r"janeiro|fevereiro|março|maio|junho|julho|setembro|outubro|dezembro)"
)
_STATES = (
    r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|"
    r"MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)"
)
_ORG_SUFFIX = (
    r"(?:Inc|Incorporated|Ltd|Limited|LLC|LLP|PLC|Plc|Corp|Corporation|Co|Company|"
    r"Group|Holdings?|N\.?V|NV|SE|AG|GmbH|S\.?A|SA|SpA|AB|ASA|Oyj|BV|Bancorp|"
    r"Bank|Trust|Industries|Technologies|Pharma|Partners|LP|L\.P)"
)


_SPECIFIC_DATE = regex.compile(
    r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b"  # 14/03/1985, 2024-03-14, 12.01.2024
    rf"|\b{_MONTH}\.?\s+{_DAY}\b"  # March 3rd, Mar 14 09:13
    rf"|\b{_DAY}\s+(?:of\s+)?(?:{_MONTH}|{_FOREIGN_MONTH})\b"  # noqa: E501 — 3rd of March, 12 janvier
    rf"|\b\d{{1,2}}[-/]{_MONTH}[-/]\d{{2,4}}\b"  # 03-JUL-1972, 14/Mar/2024
    r"|\d{4}年\d{1,2}月\d{1,2}日"
    rf"|\b{_MONTH}\.?,?\s+(?:19|20)\d{{2}}\b"  # March 2024
    r"|\b(?:19|20)\d{2}[/-](?:0[1-9]|1[0-2])\b",  # 2024-03
    regex.IGNORECASE,
)


def is_specific_date(text: str) -> bool:
    """A date expression that names a day of a month, or a month of a year: what
    HIPAA's Safe Harbor removes ("all elements of dates, except year"). A weekday,
    a month or a year alone, a time of day, a duration and a relative date ("next
    week", "every 6 months", "the March release", "9:30") are not, though spaCy
    calls them DATE or TIME."""
    return _SPECIFIC_DATE.search(text) is not None


_EPONYM_HEAD = (
    r"(?:scale|score|procedure|operation|syndrome|disease|sign|test|criteria|"
    r"classification|index|manoeuvre|maneuver|reflex|examination|exam|"
    r"questionnaire|inventory|protocol|method|algorithm|distribution|equation)"
)
_EPONYM_AFTER = regex.compile(
    r"^(?:['’]s)?\s+" + _EPONYM_HEAD + r"\b", regex.IGNORECASE
)
_EPONYM_LAST = regex.compile(r"\b" + _EPONYM_HEAD + r"$", regex.IGNORECASE)
_ACRONYM = regex.compile(r"\p{Lu}{2,6}s?")
_NOT_NAME_CHARS = regex.compile(r"[^\p{L}\s&.'’,-]")
_FILE_EXTENSIONS = frozenset(
    "py js ts sh md rs go pl rb cs cc cpp hpp java kt toml yaml yml json conf cfg ini "
    "log txt csv sql xml html css lock".split()
)


def is_ner_noise(text: str, entity: str, start: int, end: int) -> bool:
    """A finding of spaCy's small model (or a schemeless URL) that is not PII, by
    its shape: an organisation that is an acronym ("ECG", "DHCP", "NSAIDs") or
    one or two words holding digits or code ("Ubuntu 22.04", "&& npm"); a name,
    organisation or
    place that is an eponym ("Glasgow Coma Scale", "the Whipple procedure",
    "Parkinson's disease"); a person written without a capital letter that does
    not start with a given name of :mod:`.names`' lists ("brb grabbing"); a URL
    that is a file name ("session.py")."""
    span = text[start:end]
    if entity in ("PERSON", "ORGANIZATION", "LOCATION"):
        if _EPONYM_LAST.search(span) or _EPONYM_AFTER.match(text[end : end + 40]):
            return True
    if entity == "ORGANIZATION":  # digits or code in a name of one or two words
        short = len(span.split()) <= 2
        return bool(
            _ACRONYM.fullmatch(span) or (short and _NOT_NAME_CHARS.search(span))
        )
    if entity == "PERSON":
        lowercase = not any(c.isupper() for c in span)
        if lowercase and is_given_name(span.split()[0]):
            return False
        return lowercase or bool(_NOT_NAME_CHARS.search(span))
    if entity == "URL":
        low = span.casefold()
        if "://" in low or low.startswith("www."):
            return False
        host = low.split("/")[0]
        return "/" not in low and host.rsplit(".", 1)[-1] in _FILE_EXTENSIONS
    return False


def custom_recognizers() -> list[EntityRecognizer]:
    return [
        SpanPatternRecognizer(
            "STREET_ADDRESS",
            "FedshieldStreetAddress",
            [
                ("military", _MILITARY, 0.95),
                ("street-us", _STREET_US + _CONTINUATION, 0.9),
                ("street-leading", _STREET_LEADING + _CONTINUATION, 0.9),
                ("street-ending", _STREET_ENDING + _CONTINUATION, 0.9),
                (
                    "number-words-number",
                    r"\b\d{1,6}\s+\p{Lu}[\p{L}'’.-]*(?:\s+\p{L}[\p{L}'’.-]*){0,3}\s+\d{1,5}\b"
                    + _CONTINUATION,
                    0.8,
                ),
                ("unit", r"\b(?:Apt|Apartment|Suite|Ste)\.?\s*#?\s*\d+\p{L}?\b", 0.9),
            ],
        ),
        SpanPatternRecognizer(
            "PERSON",
            "FedshieldPersonContext",
            [
                ("salutation", _SALUTATION + r"(?P<pii>" + _NAME + r")", 0.9),
                (
                    "introduced",
                    r"(?i:\bmy name is|\bname\s*:|\bpatient|\bcontact\s*:|\bsigned,?)"
                    r"\s+(?P<pii>" + _NAME + r")",
                    0.9,
                ),
                (  # "name": "Haruto Sato", owner="Yaw Asante", GIT_AUTHOR_NAME='...'
                    "key-value",
                    r"(?i:(?:\b|(?<=_))(?:name|author|owner|maintainer|contact|assignee"
                    r"|reporter|full_?name|display_?name|customer|employee))[\"']?\s*"
                    r"[:=]\s*[\"']?(?P<pii>\p{Lu}[\p{L}'’-]+(?:[ ]+\p{Lu}[\p{L}'’.-]+){1,3})",  # noqa: E501
                    0.85,
                ),
                (  # an e-mail's display name: "Mateus Oliveira <mateus@...>"
                    "display-name",
                    r"(?P<pii>\p{Lu}[\p{L}'’-]+(?:[ ]+\p{Lu}[\p{L}'’.-]+){1,3})"
                    r"\s+<[^>\s@]+@",
                    0.85,
                ),
                (
                    "first-initial-last",
                    r"\b(?P<pii>"
                    + _NAME_WORD
                    + r"[ ]+\p{Lu}\.?[ ]+"
                    + _NAME_WORD
                    + r")\b",
                    0.86,
                ),
            ],
        ),
        SpanPatternRecognizer(
            "ORGANIZATION",
            "FedshieldOrganization",
            [
                (
                    "legal-form",
                    r"\b(?:(?:\p{Lu}|\d)[\p{L}\d&'’.()-]*\s+){1,6}"
                    + _ORG_SUFFIX
                    + r"\b\.?",
                    0.86,
                )
            ],
        ),
        SpanPatternRecognizer(
            "DATE_TIME",
            "FedshieldDate",
            [
                ("month-day-year", rf"\b{_MONTH}\.?\s+{_DAY},?\s+\d{{4}}\b", 0.9),
                (
                    "day-month-year",
                    rf"\b(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH}\.?,?\s+\d{{4}}\b",
                    0.9,
                ),
                (
                    "month-day",
                    rf"\b(?i:{_MONTH})\.?\s+{_DAY}\b(?!\s*(?:%|mg|ml|kg|g)\b)",
                    0.85,
                ),
                (
                    "day-month",
                    rf"\b{_DAY}\s+(?:of\s+)?(?i:{_MONTH}|{_FOREIGN_MONTH})\b\.?(?:,?\s+\d{{4}})?",
                    0.85,
                ),
                (
                    "log-stamp",
                    rf"\b\d{{1,2}}/{_MONTH}/\d{{4}}(?::\d\d){{0,3}}(?:\s[+-]\d{{4}})?",
                    0.9,
                ),
                ("cjk", r"\d{4}年\d{1,2}月\d{1,2}日", 0.9),
                (
                    "numeric",
                    r"\b(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d{2}\b",
                    0.9,
                ),
                (
                    "iso",
                    r"\b(?:19|20)\d{2}-[01]\d-[0-3]\d"
                    r"(?:[ T][0-2]\d:[0-5]\d(?::[0-5]\d(?:\.\d+)?)?)?\b",
                    0.9,
                ),
            ],
        ),
        SpanPatternRecognizer(
            "AGE",
            "FedshieldAge",
            [
                (
                    "n-year-old",
                    r"\b(?P<pii>\d{1,3})(?:[- ]years?[- ]old|\s?(?:y/o|yo|yrs? old)\b)",
                    0.9,
                ),
                (
                    "aged-n",
                    r"(?i:\baged|\bage:|\bage of|\bturned|\bturning|\bturn|\bwhen (?:he|she|"  # noqa: E501
                    r"they|I) (?:was|were|turned))\s+(?P<pii>\d{1,3})\b",
                    0.9,
                ),
            ],
        ),
        SpanPatternRecognizer(
            "US_ZIP_CODE",
            "FedshieldZip",
            [
                ("state-zip", rf"\b{_STATES}\s+(?P<pii>\d{{5}}(?:-\d{{4}})?)\b", 0.9),
                (
                    "zip-context",
                    r"(?i:\bzip(?: code)?|\bpostal code|\bpostcode)\s*:?\s*"
                    r"(?P<pii>\d{2,5}(?:[- ]\d{3,4})?)\b",
                    0.9,
                ),
            ],
        ),
        SpanPatternRecognizer(
            "US_SSN",
            "FedshieldSsn",
            [
                ("ssn-dashed", r"\b\d{3}-\d{2}-\d{4}\b", 0.95),
                (
                    "ssn-context",
                    r"(?i:\bssn|\bsocial security(?: number)?)\s*(?:is|:|#)?\s*"
                    r"(?P<pii>\d{3}[- ]?\d{2}[- ]?\d{4})\b",
                    0.95,
                ),
            ],
        ),
        SpanPatternRecognizer(
            "EMAIL_ADDRESS",
            "FedshieldEmail",
            [("email", r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+", 0.95)],
        ),
        SpanPatternRecognizer(
            "CREDIT_CARD",
            "FedshieldCard",
            [
                ("card", r"(?<![\w-])\d{4}(?:[ -]?\d{3,6}){2,4}(?![\w-])", 0.95),
                ("card-plain", r"(?<![\w-])\d{12,19}(?![\w-])", 0.95),
            ],
            validate=luhn,
        ),
        SpanPatternRecognizer(
            "PHONE_NUMBER",
            "FedshieldPhone",
            [
                (
                    "us-phone",
                    r"(?<![\w+])(?:\+?1[-. ]?)?(?:\(\d{3}\)\s?|\d{3}[-. ])"
                    r"\d{3}[-. ]\d{4}\b",
                    0.9,
                ),
                (
                    "grouped",
                    r"(?<![\w+(.-]|\d[:.])(?!(?:19|20)\d{2}-[01]\d-[0-3]\d|\d{1,3}(?:\.\d{1,3}){3}(?![\d.]))"
                    r"(?:\+\d{1,3}[ .-]?)?(?:\(0?\d{1,5}\)[ .-]?)?"
                    r"\d{2,5}(?:[ .-]\d{2,8}){1,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?"
                    r"(?!\w|-\d|\.\d)",
                    0.9,
                ),
                ("compact", r"(?<![\w+])(?:\+|\b0)\d{9,13}\b", 0.9),
                ("ten-digits", r"(?<![\w+])\d{10}\b", 0.6),
            ],
            validate=digits_between(8, 20),
        ),
        SpanPatternRecognizer(
            "PHONE_NUMBER",
            "FedshieldPhoneLabelled",
            [
                (
                    "labelled",
                    r"(?i:\bphone|\btel|\bmobile|\bcell|\bfax)(?:\s*(?:no\.?|number))?"
                    r"\s*:?\s*(?P<pii>\+?\(?\d[\d ()./-]{4,22}\d)",
                    0.95,
                ),
                (
                    "local",
                    r"(?<![\w+(.-]|\d[:.])\d{3}[-. ]\d{4}(?!\w|[ .-]\d)",
                    0.9,
                ),
            ],
            validate=digits_between(6, 15),
        ),
    ]
