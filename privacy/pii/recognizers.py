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
  timestamps.
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

from .pattern_recognizer import SpanPatternRecognizer, digits_between, luhn

__all__ = [
    "NOT_ORGANIZATIONS",
    "custom_recognizers",
    "is_vague_date",
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
_STREET_US = (
    r"\b\d{1,6}(?:\s+\d{1,5})?\s+(?:"
    + _WORD
    + r"\s+){0,3}(?i:"
    + "|".join(_SUFFIXES)
    + r")\b\.?(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
)
_STREET_LEADING = (
    r"\b\d{1,6}(?:\s+\d{1,5})?,?\s+(?i:" + "|".join(_LEADING) + r")\.?\s+"
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
_STATES = (
    r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|"
    r"MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)"
)
_ORG_SUFFIX = (
    r"(?:Inc|Incorporated|Ltd|Limited|LLC|LLP|PLC|Plc|Corp|Corporation|Co|Company|"
    r"Group|Holdings?|N\.?V|NV|SE|AG|GmbH|S\.?A|SA|SpA|AB|ASA|Oyj|BV|Bancorp|"
    r"Bank|Trust|Industries|Technologies|Pharma|Partners|LP|L\.P)"
)


_CALENDAR_WORD = regex.compile(
    r"\d|\b(?:" + _MONTH + r"|Mon|Tue|Wed|Thu|Fri|Sat|Sun)(?:day)?\b",
    regex.IGNORECASE,
)
_DURATION = regex.compile(
    r"(?:about |over |almost |nearly )?\d+(?:\.\d+)?\s*(?:-\s*)?"
    r"(?:seconds?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?)",
    regex.IGNORECASE,
)


def is_vague_date(text: str) -> bool:
    """A date expression that names no day, month or year ("next week", "a few
    months ago", "this morning") or a duration ("128 minutes"): not PII, though
    spaCy calls it DATE/TIME."""
    return (
        _CALENDAR_WORD.search(text) is None
        or _DURATION.fullmatch(text.strip()) is not None
    )


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
                ("n-year-old", r"\b(?P<pii>\d{1,3})[- ]years?[- ]old\b", 0.9),
                (
                    "aged-n",
                    r"(?i:\baged|\bage:|\bage of|\bturned|\bturning|\bwhen (?:he|she|"
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
                ("canada", r"\b[A-Z]\d[A-Z]\s?\d[A-Z]\d\b", 0.8),
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
