"""Counting rules v2 on real spaCy spans (CONTRACT.md, "Counting rules v2")."""

from __future__ import annotations

import pytest

from ingest.core.naming import AliasError, Aliases, article_mentions, majority_label, rules_record, span_key, text_key


def keys(nlp, text: str, aliases: Aliases | None = None) -> list[tuple[str, str]]:
    return article_mentions(nlp(text).ents, aliases)


@pytest.mark.parametrize("text, expected", [
    ("Donald Trump's aides spoke on Monday.", ("donald trump", "PERSON")),            # possessive 's
    ("the White House's lawyers answered.", ("white house", "ORG")),                # leading "the" and 's
    ('He quoted "Barack Obama\' loudly.', ("barack obama", "PERSON")),               # a closing quote token
    ("They met at The Hague in May.", ("hague", "GPE")),                             # "The" as part of the span
])
def test_one_span_one_key(nlp, text, expected):
    assert expected in keys(nlp, text)


def test_rules_1_to_3_on_tokens():
    class T:
        def __init__(self, text, ws=" "):
            self.text, self.whitespace_ = text, ws

    assert span_key([T("the"), T("U.S."), T("Senate", "")]) == "u.s. senate"
    assert span_key([T("The", "")]) == "the"                                 # a token must remain
    assert span_key([T("«"), T("Ｆｏｏ"), T("Bar"), T("’s", "")]) == "foo bar"  # NFKC, edge quotes, ’s
    assert span_key([T("Al"), T("Jazeera", ""), T("'s", "")]) == "al jazeera"
    assert span_key([T("(Reuters)", "")]) == "reuters"
    assert span_key([T("--", "")]) == ""                                      # nothing left: dropped
    assert text_key("  The   White House's ") == "white house"
    assert text_key("Trump’s") == "trump"


def test_a_surname_counts_as_the_one_full_name_of_its_article(nlp):
    mentions = keys(nlp, "Hillary Clinton met voters in Ohio. Clinton said the Washington Post was unfair.")
    assert [k for k, label in mentions if label == "PERSON"] == ["hillary clinton", "hillary clinton"]


def test_a_surname_with_two_full_names_stays_itself(nlp):
    mentions = keys(nlp, "Hillary Clinton and Bill Clinton met voters in Ohio. Clinton said nothing.")
    assert [k for k, label in mentions if label == "PERSON"] == ["hillary clinton", "bill clinton", "clinton"]


def test_a_surname_without_a_full_name_stays_itself(nlp):
    assert ("clinton", "PERSON") in keys(nlp, "Clinton visited Ohio on Friday and met the mayor of Cleveland.")


def test_a_single_word_that_is_not_a_person_is_never_folded(nlp):
    """`Washington` (GPE) ends the PERSON `George Washington` of the same article: it stays itself."""
    mentions = keys(nlp, "George Washington crossed the Delaware. Later Washington was a city in the United States.")
    assert ("washington", "GPE") in mentions and ("george washington", "PERSON") in mentions
    assert ("united states", "GPE") in mentions


def test_aliases_apply_last_to_keys_after_rules_1_to_4(nlp):
    aliases = Aliases.parse("alias,canonical\nHillary Clinton,Hillary Rodham Clinton\nThe U.S.,United States\n")
    mentions = keys(nlp, "Hillary Clinton met voters in Ohio. Clinton said the U.S. would win.", aliases)
    assert [k for k, label in mentions if label == "PERSON"] == ["hillary rodham clinton"] * 2  # rule 4, then 5
    assert ("united states", "GPE") in mentions
    assert rules_record(aliases).startswith("v2+aliases:") and rules_record(Aliases()) == "v2"
    assert Aliases.parse("Trump,Donald Trump").digest == Aliases.parse("trump's , DONALD  TRUMP").digest


@pytest.mark.parametrize("text, why", [("a,b,c", "3 fields"), (",x", "empty"), ("a,b\na,c", "already an alias")])
def test_a_bad_alias_file_is_one_clear_line(text, why):
    with pytest.raises(AliasError, match=why):
        Aliases.parse(text, "aliases.csv")


def test_label_majority_and_ties():
    assert majority_label({"ORG": 3, "PERSON": 5}) == "PERSON"
    assert majority_label({"ORG": 2, "GPE": 2}) == "GPE"
    assert majority_label({}) == ""
