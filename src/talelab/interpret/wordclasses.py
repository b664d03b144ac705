"""Coarse word classes for the tokens a neuron fires on: a small offline lexicon plus suffix rules.

Classes: noun, verb, adjective (with -ly adverbs: both modify), function (determiners, pronouns, prepositions,
conjunctions, auxiliaries, common adverbs), punctuation (with line breaks), name, other.

A token is classed by the whole word it sits in ("dog" for the token "g" of " do" + "g"), found in the text around
it. Limits, on purpose: no part-of-speech tagging in context ("play" and "walk" are always verbs, "fun" always a
noun, "like" always a function word); the lexicon holds the few hundred words that make up most of TinyStories;
unknown words fall to suffix rules (-ing/-ed verb, -ly/-ful/-less/-ous/-ive/-able adjective, -ness/-tion/-ment
noun) or to "other", so rare words and non-English text are mostly "other". Names are the listed ones anywhere, or
any capitalised word that does not start a sentence or a quotation.
"""

from __future__ import annotations

import re

CLASSES = ("noun", "verb", "adjective", "function", "punctuation", "name", "other")

FUNCTION_WORDS = frozenset("""
a an the this that these those some any every each no all both either neither another other such what which whose
i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our ours
ourselves they them their theirs themselves who whom whoever whatever someone something somebody anyone anything
anybody everyone everything everybody nobody nothing one ones
in on at to from of for with without by about above below under over into onto out up down off through around
across along behind beside between near inside outside past toward towards upon until till since before after
during against among like than as
and or but so because if when while then though although unless where why how yet nor
am is are was were be been being do does did doing done have has had having will would shall should can could may
might must let
not never very too also just only even still again always often sometimes soon now here there today tonight
ever already almost really quite maybe perhaps once twice instead together away back yes oh please
much many more most few less lot lots enough
""".split())

NAMES = frozenset("""
lily tom tim timmy ben sue sara sarah max mia anna sam jack lucy amy jill joe billy bob molly emma
mittens tweety rex bella jane mike john mary kate zoe leo ella ollie rosie tommy sally jenny buddy
""".split())

NOUNS = frozenset("""
mom mommy dad daddy mother father mum brother sister friend friends boy girl baby kid kids child children man woman
lady people family grandma grandpa teacher king queen princess prince bird dog cat puppy kitten bunny rabbit bear
fish duck frog mouse lion fox owl horse cow pig sheep monkey elephant bee butterfly bug ant squirrel dragon monster
animal animals toy toys ball doll car truck train boat plane book box bag hat shoe shoes dress shirt coat cake
cookie cookies apple apples candy food lunch dinner breakfast milk water juice tea ice cream pie bread soup
park garden house home room bed door window table chair kitchen school store shop town city street road forest wood
woods tree trees flower flowers grass leaf leaves sky sun moon star stars cloud rain snow wind sea ocean beach lake
river pond hill mountain rock sand stone world day night morning time week year way place part thing things idea
game games fun picture pictures song music story stories name face hand hands head eye eyes ear nose mouth hair
arm leg legs feet foot tail wing wings heart voice sound noise color colors shape gift present party birthday
surprise lesson problem job work help money coin key map hole nest cave castle bridge fence wall floor roof
box boxes pot cup plate bowl spoon ring necklace crown sword wand kite balloon bike swing slide sandcastle bath
jar basket bucket rope stick sticks paper pen pencil crayon crayons button lamp clock phone computer robot
""".split())

VERBS = frozenset("""
go went gone come came see saw seen look watch find found get got give gave take took make made put say said tell
told ask answer know knew think thought feel felt want need like love hate hope wish try play run ran walk jump
hop climb swim fly flew fall fell sit sat stand stood lie lay sleep slept wake woke eat ate drink drank cook bake
share help hug kiss smile laugh cry cried shout yell scream sing sang dance draw paint read write build built break
broke fix clean wash open close push pull throw threw catch caught kick hit hold held carry bring brought buy
bought pay keep kept leave left stay wait start stop finish begin began learn teach taught show hide hid seek
search call hear heard listen talk speak spoke meet met follow lead chase grow grew turn move pick drop roll
bounce spin shine glow wear wore pretend remember forget forgot understand agree decide explore visit live die
save protect fight win won lose lost miss touch smell taste enjoy worry care notice wonder believe promise thank
become became sound seem happen sail ride rode drive drove swing swung dig dug plant pour fill reach stretch fit
comfort
""".split())

ADJECTIVES = frozenset("""
big small little tiny huge large tall short long good bad nice kind mean happy sad angry mad scared afraid brave
shy proud tired sleepy hungry thirsty sick hurt fine safe warm cold hot cool wet dry soft hard loud quiet fast
slow quick old new young pretty beautiful ugly cute funny silly smart clever wise strong weak rich poor clean
dirty full empty bright dark shiny sparkly colorful red blue green yellow pink purple orange black white brown
gray grey golden special favorite favourite best better great wonderful amazing excited curious careful gentle
friendly lonely busy lazy sweet yummy delicious tasty sticky fluffy furry round flat sharp smooth heavy light
high low deep fresh real magic magical easy different same whole own sorry glad ready sure alone free
""".split())

_WORD = re.compile(r"[A-Za-z0-9'’]+")
# A capitalised word right after one of these (or at the start) begins a sentence or a quotation: not a name.
_SENTENCE_STARTERS = ".!?:\n\"“‘'("


def word_class(word: str, sentence_initial: bool = False) -> str:
    """The class of one word as written (capitalisation matters for names)."""
    if not word:
        return "other"
    if not any(c.isalpha() for c in word):
        return "other" if any(c.isdigit() for c in word) else "punctuation"
    bare = word.lower().replace("’", "'")
    for ending in ("'s", "'ll", "'re", "'ve", "'d", "n't"):  # Lily's, she'll, don't: the stem decides
        if bare.endswith(ending) and len(bare) > len(ending):
            bare = bare[: -len(ending)]
            break
    if bare in FUNCTION_WORDS or bare in ("ca", "wo", "sha"):  # what is left of can't, won't, shan't
        return "function"
    if bare in NAMES or (word[0].isupper() and not sentence_initial):
        return "name"
    return lexical_class(bare)


def lexical_class(word: str) -> str:
    """noun / verb / adjective for a lowercase word from the lexicon, its inflections, or its suffix; else other."""
    for cls, lexicon in (("noun", NOUNS), ("verb", VERBS), ("adjective", ADJECTIVES)):
        if word in lexicon:
            return cls
    for stem in stems(word, ("ing", "ed")):
        if stem in VERBS:
            return "verb"
    for stem in stems(word, ("s", "es")):
        if stem in NOUNS:
            return "noun"
        if stem in VERBS:
            return "verb"
    for stem in stems(word, ("er", "est", "ly")):
        if stem in ADJECTIVES:
            return "adjective"
    if word.endswith(("ing", "ed")) and len(word) > 4:
        return "verb"
    if word.endswith(("ly", "ful", "less", "ous", "ive", "able")) and len(word) > 4:
        return "adjective"
    if word.endswith(("ness", "tion", "ment")) and len(word) > 5:
        return "noun"
    return "other"


def stems(word: str, endings: tuple[str, ...]) -> list[str]:
    """Candidate stems of `word` without one of `endings`: plain, with a silent e back, undoubled, or y for i."""
    out = []
    for ending in endings:
        if word.endswith(ending) and len(word) > len(ending) + 1:
            stem = word[: -len(ending)]
            out += [stem, stem + "e"]
            if len(stem) > 2 and stem[-1] == stem[-2]:  # running -> run, stopped -> stop
                out.append(stem[:-1])
            if stem.endswith("i"):  # cried -> cry, happily -> happy
                out.append(stem[:-1] + "y")
    return out


def classify_tokens(pieces: list[str]) -> list[tuple[str, str]]:
    """(word, class) of every token, given each token's text (pieces that concatenate to the text they come from):
    the whole word the token sits in, or the token's own text when it is no part of a word."""
    text = "".join(pieces)
    words = {}  # character offset -> (word, start), for every character inside a word
    for match in _WORD.finditer(text):
        for i in range(match.start(), match.end()):
            words[i] = (match.group(), match.start())
    out, offset = [], 0
    for piece in pieces:
        start = offset + (len(piece) - len(piece.lstrip()))
        offset += len(piece)
        inside = next((words[i] for i in range(start, offset) if i in words), None)
        if inside is None:
            kind = "punctuation" if piece and not any(c.isalnum() for c in piece) else "other"
            out.append((piece.strip() or piece, kind))
            continue
        word, word_start = inside
        out.append((word, word_class(word, sentence_initial=starts_sentence(text, word_start))))
    return out


def starts_sentence(text: str, index: int) -> bool:
    """Whether the word at `index` opens the text, a sentence or a quotation (looking back over spaces)."""
    index -= 1
    while index >= 0 and text[index] in " \t":
        index -= 1
    return index < 0 or text[index] in _SENTENCE_STARTERS
