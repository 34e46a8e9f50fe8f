"""A site's text is scrubbed once per dataset version and cached in its state dir."""

from pathlib import Path

import pytest

from fedshield.client.scrubbing import CACHE_DIR, scrub_site
from fedshield.client.site import SiteData
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.pii import PIIConfig, PIIMode


def _site(texts: tuple[str, ...]) -> SiteData:
    labels = tuple(i % 2 for i in range(len(texts)))
    return SiteData(name="clinic", train=LabeledTexts(texts, labels), eval=None)


def test_scrubbed_copy_is_cached_and_invalidated_when_the_data_changes(
    tmp_path: Path,
) -> None:
    cfg = PIIConfig(mode=PIIMode.TAG)
    site = _site(("Maria Garcia called.", "Write to j.doe@example.org today."))
    first = scrub_site(site, cfg=cfg, state_dir=tmp_path)
    assert not first.cached
    assert first.site.train.texts == (
        "<PERSON> called.",
        "Write to <EMAIL_ADDRESS> today.",
    )
    assert first.counts == {"EMAIL_ADDRESS": 1, "PERSON": 1}
    again = scrub_site(site, cfg=cfg, state_dir=tmp_path)
    assert again.cached and again.site == first.site and again.counts == first.counts
    changed = scrub_site(
        _site(("Maria Garcia called.", "Call (415) 555-2671")),
        cfg=cfg,
        state_dir=tmp_path,
    )
    assert not changed.cached and changed.counts == {"PERSON": 1, "PHONE_NUMBER": 1}
    masked = scrub_site(site, cfg=PIIConfig(mode=PIIMode.MASK), state_dir=tmp_path)
    assert not masked.cached  # other settings, another cache entry
    assert len(list((tmp_path / CACHE_DIR).iterdir())) == 3
    cached_text = "".join(p.read_text() for p in (tmp_path / CACHE_DIR).iterdir())
    assert "Maria Garcia" not in cached_text and "j.doe" not in cached_text


def test_pii_off_leaves_the_text_alone(tmp_path: Path) -> None:
    site = _site(("Maria Garcia called.",))
    out = scrub_site(site, cfg=PIIConfig(mode=PIIMode.OFF), state_dir=tmp_path)
    assert out.site == site and out.counts == {}
    assert not (tmp_path / CACHE_DIR).exists()


def test_a_cached_copy_is_never_reused_under_other_pii_settings(
    tmp_path: Path,
) -> None:
    """A copy scrubbed for fewer types, a higher threshold or another site key is
    another cache entry: reusing it would train on what those settings left in."""
    site = _site(
        ("Maria Garcia wrote from 10.213.77.41.", "Write to j.doe@example.org today.")
    )

    def scrubbed(cfg: PIIConfig, state: Path) -> tuple[bool, str]:
        out = scrub_site(site, cfg=cfg, state_dir=state)
        return out.cached, " ".join(out.site.train.texts)

    fewer = PIIConfig(mode=PIIMode.TAG, entities=("PERSON",))
    assert scrubbed(fewer, tmp_path / "a") == (
        False,
        "<PERSON> wrote from 10.213.77.41. Write to j.doe@example.org today.",
    )
    cached, text = scrubbed(PIIConfig(mode=PIIMode.TAG), tmp_path / "a")
    assert "10.213.77.41" not in text and "j.doe" not in text and not cached

    strict = PIIConfig(mode=PIIMode.TAG, score_threshold=0.95)
    assert "10.213.77.41" in scrubbed(strict, tmp_path / "b")[1]  # IP scores < 0.95
    cached, text = scrubbed(PIIConfig(mode=PIIMode.TAG), tmp_path / "b")
    assert "10.213.77.41" not in text and not cached

    pseudonyms = PIIConfig(mode=PIIMode.PSEUDONYM)
    cached, old = scrubbed(pseudonyms, tmp_path / "c")
    assert not cached and "Maria Garcia" not in old
    assert scrubbed(pseudonyms, tmp_path / "c") == (True, old)
    key = tmp_path / "c" / "pii_key"
    key.write_bytes(bytes(32))  # the site rotates its key
    cached, new = scrubbed(pseudonyms, tmp_path / "c")
    assert "Maria Garcia" not in new and new != old and not cached


def test_the_scrub_cache_is_not_reused_after_the_recognizers_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade of the recognizers (their source, Presidio's or spaCy's version)
    scrubs afresh: the copy an older, weaker set made is never trained on again."""
    import fedshield.client.scrubbing as scrubbing

    site = _site(("Maria Garcia called.",))
    cfg = PIIConfig(mode=PIIMode.TAG)
    monkeypatch.setattr(scrubbing, "recognizers_version", lambda: "old")
    assert not scrub_site(site, cfg=cfg, state_dir=tmp_path).cached
    assert scrub_site(site, cfg=cfg, state_dir=tmp_path).cached
    monkeypatch.setattr(scrubbing, "recognizers_version", lambda: "new")
    assert not scrub_site(site, cfg=cfg, state_dir=tmp_path).cached
