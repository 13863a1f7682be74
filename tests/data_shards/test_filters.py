"""The named cleaning steps as pure functions, and their counts."""

from data_shards.config import MaskPII, MinLength, NormalizeUnicode, StripMarkup
from data_shards.filters import FilterChain, mask_pii, normalize_unicode, strip_markup


def test_strip_markup_removes_tags_scripts_and_decodes_entities():
    html = "<html><script>var x = 1;</script><p>Fish &amp; chips</p><!-- note --><br/>done</html>"
    assert strip_markup(html) == "Fish & chipsdone"


def test_normalize_unicode_composes_and_drops_control_characters():
    assert normalize_unicode("cafe\u0301\x00\x07 tab\tnew\nline\r\nend") == "caf\u00e9 tab\tnew\nline\nend"


def test_mask_pii_masks_email_phone_and_ip_but_not_versions():
    text = "mail bob.smith@example.org or call +1 415-555-0134, host 192.168.1.20, Python 3.12.1"
    assert mask_pii(text) == "mail <EMAIL> or call <PHONE>, host <IP>, Python 3.12.1"


def test_chain_applies_steps_in_order_and_counts_drops_and_changes():
    chain = FilterChain([StripMarkup(), NormalizeUnicode(), MinLength(min_chars=5), MaskPII()])
    assert chain("<b>hi</b>") is None
    assert chain("write to a@b.io now") == "write to <EMAIL> now"
    assert chain("plain text stays") == "plain text stays"
    assert chain.counts == {
        "strip_markup": {"dropped": 0, "changed": 1},
        "normalize_unicode": {"dropped": 0, "changed": 0},
        "min_length": {"dropped": 1, "changed": 0},
        "mask_pii": {"dropped": 0, "changed": 1},
    }
