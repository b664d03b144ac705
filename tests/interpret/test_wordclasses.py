"""Words fall into their coarse classes; every token of a word gets that word's class."""

import pytest

from talelab.interpret.wordclasses import classify_tokens, word_class


@pytest.mark.parametrize("word, expected", [
    ("dog", "noun"), ("toys", "noun"), ("boxes", "noun"), ("happiness", "noun"),
    ("ran", "verb"), ("jumped", "verb"), ("running", "verb"), ("cried", "verb"), ("liked", "verb"),
    ("wandering", "verb"),
    ("happy", "adjective"), ("bigger", "adjective"), ("happily", "adjective"), ("colorful", "adjective"),
    ("the", "function"), ("She", "function"), ("don't", "function"), ("can't", "function"), ("very", "function"),
    (",", "punctuation"), ("!", "punctuation"),
    ("Lily", "name"), ("Lily's", "name"),
    ("42", "other"), ("xylophone", "other"),
])
def test_words_fall_into_their_classes(word, expected):
    assert word_class(word) == expected


def test_a_capitalised_word_is_a_name_unless_it_starts_a_sentence():
    assert word_class("Zack") == "name"
    assert word_class("Zack", sentence_initial=True) == "other"
    assert word_class("Lily", sentence_initial=True) == "name"  # a listed name is a name anywhere
    assert word_class("Dog", sentence_initial=True) == "noun"


def test_every_token_of_a_word_gets_the_word_and_its_class():
    pieces = ["Once", " upon", " a", " time", ",", " a", " do", "g", " named", " Zack", " ran", ".", " Then",
              " \"", "Come", "!\"", "\n", "Lily", "’", "s"]
    assert classify_tokens(pieces) == [
        ("Once", "function"), ("upon", "function"), ("a", "function"), ("time", "noun"), (",", "punctuation"),
        ("a", "function"), ("dog", "noun"), ("dog", "noun"), ("named", "verb"), ("Zack", "name"), ("ran", "verb"),
        (".", "punctuation"), ("Then", "function"), ("\"", "punctuation"), ("Come", "verb"),
        ("!\"", "punctuation"), ("\n", "punctuation"), ("Lily’s", "name"), ("Lily’s", "name"), ("Lily’s", "name"),
    ]
