"""Recognizers Presidio lacks or gets wrong for English clinical/customer text.

Each is a Presidio ``PatternRecognizer`` (regex + context words; Presidio raises
the score of a match when a context word is near it):

- ``STREET_ADDRESS``: house number, 1-4 capitalised words, a street suffix, and an
  optional unit ("42 Elm Street", "1600 Pennsylvania Ave NW, Apt 5").
- ``DATE_TIME`` written out: "March 3rd, 1985", "3 March 1985", "the 3rd of March
  1985" (spaCy's small model misses many of them).
- ``AGE``: "45-year-old", "aged 45", "age: 45", "45 years old".
- ``US_ZIP_CODE``: a state abbreviation followed by 5 (+4) digits is certain; a bare
  5-digit number only with a context word ("zip", "postal").
- ``US_SSN``: ddd-dd-dddd; Presidio's recognizer invalidates well-known sample
  numbers (078-05-1120) that still identify people in text, and scores low without
  context.
- ``PHONE_NUMBER`` (US formats): Presidio's ``phonenumbers``-based recognizer
  scores 0.4, under any useful threshold, and tags phone numbers as UK NHS numbers.

:data:`NOT_ORGANIZATIONS` lists tokens the small spaCy model tags as ORGANIZATION
("SSN", "IBAN", "DOB", ...); they are passed to Presidio as an allow list.
"""

from __future__ import annotations

from presidio_analyzer import Pattern, PatternRecognizer

__all__ = ["NOT_ORGANIZATIONS", "custom_recognizers"]

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
    r"Place|Pl|Terrace|Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl)"
)
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|"
    r"Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_STATES = (
    r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|"
    r"MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)"
)

NOT_ORGANIZATIONS = [
    "SSN", "IBAN", "DOB", "MRN", "ZIP", "Zip", "PIN", "IP", "Email", "E-mail",
    "Phone", "Tel", "Fax", "ID", "Card", "Social Security", "Passport",
]  # fmt: skip


def custom_recognizers() -> list[PatternRecognizer]:
    return [
        PatternRecognizer(
            supported_entity="STREET_ADDRESS",
            name="FedshieldStreetAddress",
            patterns=[
                Pattern(
                    "street",
                    rf"\b\d{{1,6}}\s+(?:[A-Z][A-Za-z'.-]*\s+){{1,4}}{_SUFFIX}\b\.?"
                    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
                    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[\w-]+)?",
                    0.85,
                )
            ],
            context=["address", "lives", "live", "street", "resides", "located"],
        ),
        PatternRecognizer(
            supported_entity="DATE_TIME",
            name="FedshieldWrittenDate",
            patterns=[
                Pattern(
                    "month-day-year", rf"\b{_MONTH}\.?\s+{_DAY},?\s+\d{{4}}\b", 0.85
                ),
                Pattern(
                    "day-month-year",
                    rf"\b(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH}\.?,?\s+\d{{4}}\b",
                    0.85,
                ),
                Pattern(
                    "numeric",
                    r"\b(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d{2}\b",
                    0.7,
                ),
            ],
            context=["born", "birth", "dob", "date", "admitted", "on"],
        ),
        PatternRecognizer(
            supported_entity="AGE",
            name="FedshieldAge",
            patterns=[
                Pattern("n-year-old", r"\b\d{1,3}[- ]years?[- ]old\b", 0.85),
                Pattern("aged-n", r"\b(?:aged|age:?)\s+\d{1,3}\b", 0.8),
            ],
            context=["age", "aged", "old"],
        ),
        PatternRecognizer(
            supported_entity="US_ZIP_CODE",
            name="FedshieldZip",
            patterns=[
                Pattern("state-zip", rf"\b{_STATES}\s+\d{{5}}(?:-\d{{4}})?\b", 0.9),
                Pattern("zip", r"\b\d{5}(?:-\d{4})?\b", 0.05),
            ],
            context=["zip", "postal", "zipcode", "zip code"],
        ),
        PatternRecognizer(
            supported_entity="US_SSN",
            name="FedshieldSsn",
            patterns=[
                Pattern("ssn-dashed", r"\b\d{3}-\d{2}-\d{4}\b", 0.6),
                Pattern("ssn-plain", r"\b\d{9}\b", 0.05),
            ],
            context=["ssn", "social security", "social", "security number"],
        ),
        PatternRecognizer(
            supported_entity="PHONE_NUMBER",
            name="FedshieldUsPhone",
            patterns=[
                Pattern(
                    "us-phone",
                    r"(?<!\w)(?:\+?1[-. ]?)?(?:\(\d{3}\)\s?|\d{3}[-. ])"
                    r"\d{3}[-. ]\d{4}\b",
                    0.7,
                ),
                Pattern(
                    "intl-phone",
                    r"(?<!\w)\+\d{1,3}[-. ]?\(?\d{1,4}\)?(?:[-. ]?\d{2,4}){2,4}\b",
                    0.6,
                ),
            ],
            context=["phone", "call", "tel", "mobile", "cell", "fax", "number"],
        ),
    ]
