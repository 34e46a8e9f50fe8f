"""Presidio's full set of predefined pattern recognizers, each reporting under one of
fedshield's entity families, less those dropped for a measured reason.

Presidio ships ~90 pattern recognizers, most of them country-specific (a UK
National Insurance number, a German passport, an Indian PAN) and most disabled in
its default registry. A site's text is English but its people are not all from one
country, so fedshield starts from all of them, in English, and groups their entity
types into families: a tag says ``<PASSPORT>`` whatever the issuing country, a
site's policy scrubs ``PASSPORT`` rather than thirteen national types, and the
replacement does not tell the coordinator where a person's passport is from.

Each recognizer keeps Presidio's own patterns, checksums and context words (a
weak pattern scores under the threshold unless a context word such as "passport"
stands in the five words before it, :class:`LemmaContextAwareEnhancer`). A
recognizer is dropped only with the reason in :data:`DROPPED`, measured by
``benchmarks/pii_recognizers.py`` (``benchmarks/results/pii_recognizers.json``:
each recognizer's findings on labelled sentences and on clean text).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

__all__ = [
    "DROPPED",
    "FAMILIES",
    "NOT_PATTERN_BASED",
    "family_of",
    "presidio_recognizers",
]

# Presidio entity type -> the family fedshield scrubs it as
FAMILIES: dict[str, str] = {
    # health: patients' record, member and claim numbers
    "UK_NHS": "MEDICAL_RECORD_NUMBER",
    "AU_MEDICARE": "MEDICAL_RECORD_NUMBER",
    "US_MBI": "MEDICAL_RECORD_NUMBER",
    "US_HEALTH_INSURANCE_MEMBER_ID": "MEDICAL_RECORD_NUMBER",
    "US_CLAIM_NUMBER": "MEDICAL_RECORD_NUMBER",
    "US_PRESCRIPTION_NUMBER": "MEDICAL_RECORD_NUMBER",
    "US_PRIOR_AUTHORIZATION_NUMBER": "MEDICAL_RECORD_NUMBER",
    "US_REFERRAL_NUMBER": "MEDICAL_RECORD_NUMBER",
    "DE_HEALTH_INSURANCE": "MEDICAL_RECORD_NUMBER",
    # health: clinicians' identifiers (they identify a person too)
    "US_NPI": "PROVIDER_ID",
    "MEDICAL_LICENSE": "PROVIDER_ID",
    "DE_LANR": "PROVIDER_ID",
    "DE_BSNR": "PROVIDER_ID",
    "US_PROVIDER_TAX_ID": "PROVIDER_ID",
    # travel documents
    "US_PASSPORT": "PASSPORT",
    "UK_PASSPORT": "PASSPORT",
    "DE_PASSPORT": "PASSPORT",
    "ES_PASSPORT": "PASSPORT",
    "IT_PASSPORT": "PASSPORT",
    "IN_PASSPORT": "PASSPORT",
    "KR_PASSPORT": "PASSPORT",
    "PH_PASSPORT": "PASSPORT",
    "ZA_PASSPORT": "PASSPORT",
    # driving licences
    "US_DRIVER_LICENSE": "DRIVER_LICENSE",
    "UK_DRIVING_LICENCE": "DRIVER_LICENSE",
    "DE_FUEHRERSCHEIN": "DRIVER_LICENSE",
    "IT_DRIVER_LICENSE": "DRIVER_LICENSE",
    "KR_DRIVER_LICENSE": "DRIVER_LICENSE",
    "ZA_DRIVER_LICENSE": "DRIVER_LICENSE",
    # national identity, social-insurance and personal tax numbers
    "UK_NINO": "NATIONAL_ID",
    "US_ITIN": "NATIONAL_ID",
    "CA_SIN": "NATIONAL_ID",
    "AU_TFN": "NATIONAL_ID",
    "IN_AADHAAR": "NATIONAL_ID",
    "IN_PAN": "NATIONAL_ID",
    "IN_VOTER": "NATIONAL_ID",
    "ES_NIF": "NATIONAL_ID",
    "ES_NIE": "NATIONAL_ID",
    "IT_FISCAL_CODE": "NATIONAL_ID",
    "IT_IDENTITY_CARD": "NATIONAL_ID",
    "PL_PESEL": "NATIONAL_ID",
    "FI_PERSONAL_IDENTITY_CODE": "NATIONAL_ID",
    "SE_PERSONNUMMER": "NATIONAL_ID",
    "SG_NRIC_FIN": "NATIONAL_ID",
    "DE_ID_CARD": "NATIONAL_ID",
    "DE_SOCIAL_SECURITY": "NATIONAL_ID",
    "DE_TAX_ID": "NATIONAL_ID",
    "DE_TAX_NUMBER": "NATIONAL_ID",
    "KR_RRN": "NATIONAL_ID",
    "KR_FRN": "NATIONAL_ID",
    "NG_NIN": "NATIONAL_ID",
    "PH_TIN": "NATIONAL_ID",
    "PH_UMID": "NATIONAL_ID",
    "TH_TNIN": "NATIONAL_ID",
    "TR_NATIONAL_ID": "NATIONAL_ID",
    "ZA_ID_NUMBER": "NATIONAL_ID",
    "ZA_INCOME_TAX_NUMBER": "NATIONAL_ID",
    "ZA_TRAFFIC_REGISTER_NUMBER": "NATIONAL_ID",
    # money
    "US_BANK_NUMBER": "BANK_ACCOUNT",
    "ABA_ROUTING_NUMBER": "BANK_ACCOUNT",
    "CRYPTO": "CRYPTO_WALLET",
    # vehicles (HIPAA's "vehicle identifiers")
    "UK_VEHICLE_REGISTRATION": "VEHICLE_REGISTRATION",
    "DE_KFZ": "VEHICLE_REGISTRATION",
    "IN_VEHICLE_REGISTRATION": "VEHICLE_REGISTRATION",
    "NG_VEHICLE_REGISTRATION": "VEHICLE_REGISTRATION",
    "TR_LICENSE_PLATE": "VEHICLE_REGISTRATION",
    "ZA_LICENSE_PLATE": "VEHICLE_REGISTRATION",
    # places and devices
    "UK_POSTCODE": "POSTCODE",
    "CA_POSTAL_CODE": "POSTCODE",
    "DE_PLZ": "POSTCODE",
    "MAC_ADDRESS": "MAC_ADDRESS",
    # organisations' registration and VAT numbers
    "AU_ABN": "ORGANIZATION",
    "AU_ACN": "ORGANIZATION",
    "DE_HANDELSREGISTER": "ORGANIZATION",
    "DE_VAT_ID": "ORGANIZATION",
    "IN_GSTIN": "ORGANIZATION",
    "IT_VAT_CODE": "ORGANIZATION",
    "KR_BRN": "ORGANIZATION",
    "SE_ORGANISATIONSNUMMER": "ORGANIZATION",
    "SG_UEN": "ORGANIZATION",
    "ZA_COMPANY_REGISTRATION": "ORGANIZATION",
    "ZA_VAT_NUMBER": "ORGANIZATION",
    # the generic ones fedshield already registers (same type)
    "CREDIT_CARD": "CREDIT_CARD",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "IBAN_CODE": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "URL": "URL",
    "DATE_TIME": "DATE_TIME",
    "US_SSN": "US_SSN",
    "UUID": "UUID",
}

# Predefined recognizers that are not regular expressions: NER models (spaCy's is
# registered by :mod:`.analyzer`; the others need models or services fedshield
# does not install) and phone-number libraries (ours: :mod:`.recognizers`).
NOT_PATTERN_BASED = frozenset(
    {
        "AzureAILanguageRecognizer", "AzureHealthDeidRecognizer",
        "AzureOpenAILangExtractRecognizer", "BasicLangExtractRecognizer",
        "GLiNERRecognizer", "HuggingFaceNerRecognizer", "LangExtractRecognizer",
        "MedicalNERRecognizer", "PhoneRecognizer", "SpacyRecognizer",
        "StanzaRecognizer", "TransformersRecognizer", "ZaMobileNumberRecognizer",
        "ZaTelephoneNumberRecognizer",
    }
)  # fmt: skip

# Pattern recognizers left out, each with its measured reason
# (benchmarks/results/pii_recognizers.json; "clean" is the share of clean texts,
# review snippets and hand-written hard negatives, with a finding at the
# threshold; "precision" is over the tokens it found in labelled sentences)
DROPPED: dict[str, str] = {
    "PlPeselRecognizer": (
        "precision 0.0 over 11 tokens: its checksum accepts 11-digit phone numbers, "
        "which it reported as national IDs"
    ),
    "SeOrganisationsnummerRecognizer": (
        "precision 0.0 over 12 tokens: it reported phone and account numbers as "
        "Swedish company numbers"
    ),
}


def family_of(entity: str) -> str:
    """The fedshield family of a Presidio entity type (itself when unmapped)."""
    return FAMILIES.get(entity, entity)


def _classes() -> dict[str, type]:
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_analyzer import PatternRecognizer

    return {
        name: cls
        for name, cls in vars(predefined).items()
        if inspect.isclass(cls)
        and name.endswith("Recognizer")
        and issubclass(cls, PatternRecognizer)
        and name not in NOT_PATTERN_BASED
    }


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    return tuple(sorted(_classes()))


def presidio_recognizers(*, dropped: bool = False) -> list[Any]:
    """Every predefined Presidio pattern recognizer, for English text, less those in
    :data:`DROPPED` (or only those, with ``dropped=True``)."""
    return [
        cls(supported_language="en")
        for name, cls in sorted(_classes().items())
        if (name in DROPPED) == dropped
    ]
