"""Identifiers that Presidio recognises only in one country's format, or not at all:
numbers announced by the words before them, MAC addresses, postcodes, usernames.

Why our own: Presidio's predefined recognizers (:mod:`.presidio_set`) match one
national format each and score most of them under the threshold unless a context
word is near. A hospital's note says "MRN: 4829-113", "member ID W123456789" or
"NHS no. 943 476 5919" in whatever format its systems print; an HR line says
"passport C01X00T47" for a German passport. The context word is what makes the
value an identifier, whatever its shape, so these recognizers take the value that
follows a context word (:data:`CONTEXTS`), and only the value is replaced:

- the value is one token or a few groups joined by ``-``, ``/``, ``.`` or single
  spaces (a group after a space must hold a digit, or be one capital: "QQ 12 34
  56 C"), 4 to 24 letters and digits, at least 2 of them digits
  (:func:`id_value`): "MRN pending" or "passport renewal" find nothing;
- ``MAC_ADDRESS``: six hex pairs (``:`` or ``-``) or Cisco's three dotted quads;
- ``POSTCODE``: UK postcodes (the Royal Mail format, with its space), a 4-5 digit
  code with an optional country prefix before a capitalised place name after a
  comma or at a line start ("10115 Berlin", "D-80331 München", "1012 AB
  Amsterdam"), and any code after "postcode", "postal code", "PLZ", "PIN code";
- ``USERNAME``: ``@handles`` (not e-mail addresses, decorators, npm scopes or
  ``@here``), values of ``user=`` / ``"username": ...`` / ``login: ...`` / ``user
  'jdoe'``, the folder of a home directory (``/home/jdoe``, ``C:\\Users\\jdoe``)
  and ``DOMAIN\\user`` logins.
"""

from __future__ import annotations

from presidio_analyzer import EntityRecognizer

from .pattern_recognizer import SpanPatternRecognizer

__all__ = ["CONTEXTS", "id_value", "identifier_recognizers"]

# the words that announce each kind of identifier (case-insensitive unless an
# acronym that is also an English word: SIN, PAN, FIN, TIN, NIE)
CONTEXTS: dict[str, str] = {
    "MEDICAL_RECORD_NUMBER": (
        r"(?i:\bMRN|\bmedical\s+record(?:\s+number)?|\bmed\.?\s*rec(?:ord)?"
        r"|\bhospital\s+(?:number|no\b\.?|id|#)|\bhosp\.?\s*(?:no\b\.?|#)"
        r"|\bpatient\s+(?:id|number|no\b\.?|#)|\bpt\.?\s+id|\bchart\s+(?:number|no\b\.?|#)"
        r"|\bmember(?:ship)?\s+(?:id|number|no\b\.?|#)|\bsubscriber\s+(?:id|number|no\b\.?)"
        r"|\bpolicy\s+(?:id|number|no\b\.?|#)|\binsurance\s+(?:id|number|no\b\.?|#)"
        r"|\bhealth\s+(?:card|insurance|plan)\s+(?:id|number|no\b\.?|#)"
        r"|\bNHS(?:\s+(?:number|no\b\.?|#))?|\bCHI(?:\s+(?:number|no\b\.?))?"
        r"|\bmedicare(?:\s+(?:id|number|no\b\.?|#|card))?|\bmedicaid(?:\s+(?:id|number|no\b\.?|#))?"
        r"|\bbeneficiary\s+(?:id|number)|\bclaim\s+(?:id|number|no\b\.?|#)"
        r"|\bURN|\bEHR\s+(?:id|number|no\b\.?))"
    ),
    "PASSPORT": (
        r"(?i:\bpassport(?:\s+(?:number|num|no\b\.?|#|id))?|\btravel\s+document"
        r"(?:\s+(?:number|no\b\.?))?|\breisepass(?:nummer)?|\bpasaporte|\bpasseport)"
    ),
    "DRIVER_LICENSE": (
        r"(?i:\bdriver'?s?\s+licen[cs]e(?:\s+(?:number|no\b\.?|#|id))?"
        r"|\bdriving\s+licen[cs]e(?:\s+(?:number|no\b\.?|#))?|\bDL(?:\s+(?:number|no\b\.?|#))?"
        r"|\blicen[cs]e\s+(?:number|no\b\.?|#)|\bf(?:ü|ue)hrerschein(?:nummer)?"
        r"|\bpermis\s+de\s+conduire|\bpatente)"
    ),
    "NATIONAL_ID": (
        r"(?:(?i:\bnational\s+insurance(?:\s+(?:number|no\b\.?))?|\bNI\s+(?:number|no\b\.?)"
        r"|\bNINO|\bnational\s+id(?:entity|entification)?(?:\s+card)?(?:\s+(?:number|no\b\.?))?"
        r"|\bid(?:entity)?\s+card(?:\s+(?:number|no\b\.?))?|\bsocial\s+insurance(?:\s+number)?"
        r"|\baadhaa?r(?:\s+(?:number|no\b\.?))?|\bcodice\s+fiscale|\bpersonnummer"
        r"|\bBSN|\bPESEL|\bINSEE|\bTFN|\btax\s+file\s+number|\bCPF|\bCURP"
        r"|\btax\s+(?:id|identification\s+number|number|reference)|\bITIN|\bPPSN?"
        r"|\bNRIC|\bsteuer-?id|\bsozialversicherungsnummer|\bs[ée]curit[ée]\s+sociale"
        r"|\bDNI|\bNIF)"
        r"|\b(?:SIN|PAN|FIN|TIN|NIE|NIR)(?:\s+(?:number|no\b\.?|card))?)"
    ),
    "EMPLOYEE_ID": (
        r"(?i:\bemployee\s+(?:id|number|no\b\.?|#|code)|\bemp(?:loyee)?[ _-]?(?:id|no\b\.?|num)"  # noqa: E501
        r"|\bstaff\s+(?:id|number|no\b\.?|#)|\bpersonnel\s+(?:id|number|no\b\.?)"
        r"|\bpayroll\s+(?:id|number|no\b\.?|#)|\bbadge\s+(?:id|number|no\b\.?|#)"
        r"|\bworker\s+id|\bEIN|\b(?:employee|emp|badge|staff|payroll)(?=\s+#?\s*\d))"
    ),
}
# what joins a context word to its value: "MRN: ", "passport no. ", "NHS number is "
_JOIN = (
    r"(?:[\s-]*(?i:nr|no|num|number)\b\.?)?(?:\s*(?:[:#=]|\bis\b|\bwas\b|-)\s*|\s+)"
    r"['\"]?"
)
# one token or a few groups; a group after a space holds a digit or is one capital
_VALUE = (
    r"[A-Za-z0-9]+(?:[-/.][A-Za-z0-9]+|[ ](?:[A-Za-z0-9]*\d[A-Za-z0-9]*|[A-Z]\b)){0,7}"
)


def id_value(value: str) -> bool:
    """4 to 24 letters and digits, at least 2 of them digits."""
    alnum = sum(c.isalnum() for c in value)
    return 4 <= alnum <= 24 and sum(c.isdigit() for c in value) >= 2


_HEX = r"[0-9A-Fa-f]"
_MAC = (
    rf"(?<![\w:-])(?:{_HEX}{{2}}([:-]))(?:{_HEX}{{2}}\1){{4}}{_HEX}{{2}}(?![\w:-])"
    rf"|(?<![\w.])(?:{_HEX}{{4}}\.){{2}}{_HEX}{{4}}(?![\w.])"
)
# Royal Mail: outward code (area, district), a space, inward code
_UK_POSTCODE = (
    r"\b(?:GIR 0AA|(?:[A-PR-UWYZ](?:\d[A-HJKPSTUW\d]?|[A-HK-Y]\d[ABEHMNPRV-Y\d]?))"
    r" \d[ABD-HJLNP-UW-Z]{2})\b"
)
_PLACE = r"\p{Lu}\p{Ll}{2,}"
_POSTCODE_BEFORE_PLACE = (
    r"(?:^|(?<=[,;(]\s{0,3})|(?<=\n)|(?<=\\n))\s*(?P<pii>(?:[A-Z]{1,2}-)?"
    r"(?:\d{4,5}(?:-\d{3,4})?|\d{2}-\d{3})(?:\s?[A-Z]{2}(?=\s))?\s+" + _PLACE + ")"
)
_POSTCODE_CONTEXT = (
    r"(?:(?i:\bpost(?:al)?\s*code|\bPLZ|\bcode\s+postal|\bpin\s*code|\bzip(?:\s*code)?"
    r"|\bpostleitzahl)|\bCAP)\b[\"']?\s*[:=]?\s*[\"']?(?P<pii>(?=[A-Za-z]*\d)[A-Za-z0-9]{2,5}(?:[ -][A-Za-z0-9]{2,4})?)\b"  # noqa: E501
)
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,37}[A-Za-z0-9_])?"
_NOT_HANDLES = r"(?:here|channel|everyone|all|param|return|returns|throws|see)\b"
_HANDLE = (
    r"(?<![\w@./\\])(?<!^[ \t]*)@(?!"
    + _NOT_HANDLES
    + r")"
    + _NAME
    + r"(?![\w(/@]|\.\w)"
)
_NOT_USERS = (
    r"(?!(?i:root|admin|administrator|system|null|none|nil|true|false|unknown|"
    r"anonymous|guest|default|public|shared|all|any|service|the|a|an|not|is|was|"
    r"logged|login|name|id|password|and|or|to|of|in)\b)"
)
_USER_KEY = (
    r"(?i:(?:\b|(?<=_))(?:user(?:_?name)?|login(?:_?name)?|uid|handle|screen_?name|"
    r"owner|author|assignee|reporter|account(?:_?name)?|acct|sam_?account_?name))"
)
_USER_VALUE = r"(?P<pii>" + _NOT_USERS + r"[A-Za-z_][\w.@-]{1,31}(?<![.@-]))"
_USERNAMES = [
    ("handle", _HANDLE, 0.85),
    # user=jdoe, "username": "jdoe", login: jdoe
    ("key-value", _USER_KEY + r"[\"']?\s*[:=]\s*[\"'`]?" + _USER_VALUE, 0.85),
    # user 'jdoe', login "mkowalski", my username is jdoe
    ("quoted", _USER_KEY + r"\s+[\"'`‘“]" + _USER_VALUE + r"[\"'`’”]", 0.85),
    (
        "introduced",
        r"(?i:\b(?:user\s*name|login(?:\s+name)?|handle|gamertag|screen\s+name)"
        r"\s+(?:is|was)\s+)[\"'`]?" + _USER_VALUE,
        0.85,
    ),
    # sshd: "Failed password for invalid user jdoe from ..."
    ("log-user", r"\b(?:invalid\s+)?user\s+" + _USER_VALUE + r"\s+from\b", 0.85),
    # curl -u "jdoe:secret", https://jdoe:secret@host
    ("credentials", r"(?:\s-u\s+[\"']?|://)" + _USER_VALUE + r":", 0.85),
    (
        "home-folder",
        r"(?:/home/|/Users/|(?i:[A-Z]:\\{1,2}Users\\{1,2}))"
        r"(?P<pii>(?!(?:Public|Shared|Default|All Users|runner|ubuntu)\b)[\w.-]{2,32})",
        0.85,
    ),
    (
        "domain-login",
        r"\b[A-Z][A-Z0-9-]{1,14}\\{1,2}(?P<pii>"
        + _NOT_USERS
        + r"[A-Za-z][\w.-]{1,30})",
        0.8,
    ),
]


def identifier_recognizers() -> list[EntityRecognizer]:
    return [
        *(
            SpanPatternRecognizer(
                entity,
                f"FedshieldContext{entity.title().replace('_', '')}",
                [
                    (
                        "after-context",
                        context + _JOIN + r"(?P<pii>" + _VALUE + r")",
                        0.97,
                    )
                ],
                validate=id_value,
            )
            for entity, context in CONTEXTS.items()
        ),
        SpanPatternRecognizer("MAC_ADDRESS", "FedshieldMac", [("mac", _MAC, 0.95)]),
        SpanPatternRecognizer(
            "POSTCODE",
            "FedshieldPostcode",
            [
                ("uk", _UK_POSTCODE, 0.9),
                (
                    "canada",
                    r"\b[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d\b",  # noqa: E501
                    0.9,
                ),
                ("before-place", _POSTCODE_BEFORE_PLACE, 0.7),
                ("after-context", _POSTCODE_CONTEXT, 0.9),
            ],
        ),
        SpanPatternRecognizer("USERNAME", "FedshieldUsername", _USERNAMES),
    ]
