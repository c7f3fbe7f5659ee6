"""The filler text of the long-context tasks, generated here from small word lists (no downloads).

Sentences are short, lowercase English words with a capital first letter and a full stop: no digits,
no hyphens, no all-capital words, none of the needle key words. So a number, a hyphenated key or a
variable name found in a haystack can only have come from a needle.
"""

from __future__ import annotations

import random

ADJECTIVES = (
    "quiet",
    "old",
    "small",
    "bright",
    "narrow",
    "green",
    "heavy",
    "gentle",
    "distant",
    "warm",
    "cold",
    "patient",
    "busy",
    "simple",
    "tall",
    "round",
    "early",
    "late",
    "plain",
    "soft",
    "wide",
    "careful",
    "sudden",
    "steady",
    "pale",
    "rough",
    "clever",
    "humble",
    "empty",
    "crowded",
)
NOUNS = (
    "river",
    "village",
    "farmer",
    "teacher",
    "bridge",
    "garden",
    "market",
    "window",
    "letter",
    "road",
    "forest",
    "harbor",
    "miller",
    "doctor",
    "library",
    "valley",
    "tower",
    "kitchen",
    "engine",
    "field",
    "painter",
    "sailor",
    "baker",
    "lantern",
    "wagon",
    "orchard",
    "meadow",
    "station",
    "clock",
    "school",
    "table",
    "island",
    "workshop",
    "mountain",
    "cottage",
    "student",
    "traveler",
    "council",
    "merchant",
)
VERBS = (
    "watched",
    "repaired",
    "visited",
    "followed",
    "painted",
    "carried",
    "described",
    "crossed",
    "opened",
    "cleaned",
    "counted",
    "measured",
    "remembered",
    "admired",
    "passed",
    "guarded",
    "praised",
    "studied",
    "built",
    "found",
    "moved",
    "noticed",
    "closed",
    "reached",
)
ADVERBS = (
    "slowly",
    "quickly",
    "often",
    "rarely",
    "again",
    "carefully",
    "gladly",
    "quietly",
    "once",
    "always",
    "happily",
)
INTRANSITIVE_VERBS = (
    "waited",
    "rested",
    "slept",
    "paused",
    "returned",
    "wandered",
    "listened",
    "stayed",
    "smiled",
    "worked",
    "lingered",
    "sang",
)

# Short sentences (about 24 characters): needles sit between sentences, so short ones leave room for
# filler between several needles even in a 512-character prompt.
_TEMPLATES = (
    "the {n} is {a}",
    "the {n} {vi}",
    "a {a} {n} {vi}",
    "the {n} {vi} {adv}",
    "the {n} {v} the {n2}",
)

# Words the haystack can never contain: a needle key is one colour and one animal. Short words keep the
# multi-needle prompts short.
KEY_COLOURS = (
    "azure",
    "cobalt",
    "crimson",
    "amber",
    "ivory",
    "jade",
    "scarlet",
    "violet",
    "ochre",
    "teal",
    "umber",
    "indigo",
    "maroon",
    "saffron",
    "sienna",
    "topaz",
    "beige",
    "cerise",
    "coral",
    "cyan",
    "ebony",
    "garnet",
    "hazel",
    "khaki",
    "lilac",
    "mauve",
    "olive",
    "onyx",
    "opal",
    "pearl",
    "ruby",
    "russet",
    "sable",
    "silver",
    "taupe",
    "copper",
    "bronze",
    "rust",
    "slate",
    "plum",
)
KEY_ANIMALS = (
    "falcon",
    "otter",
    "badger",
    "heron",
    "lynx",
    "marten",
    "osprey",
    "puffin",
    "raven",
    "stoat",
    "tapir",
    "walrus",
    "yak",
    "zebra",
    "bison",
    "coyote",
    "ferret",
    "gecko",
    "ibis",
    "jackal",
    "koala",
    "lemur",
    "newt",
    "alpaca",
    "beaver",
    "camel",
    "dingo",
    "egret",
    "finch",
    "hyena",
    "iguana",
    "jaguar",
    "llama",
    "moose",
    "ocelot",
    "panda",
    "quokka",
    "toucan",
    "wombat",
    "vole",
)


def sentence(rng: random.Random) -> str:
    """One haystack sentence."""
    text = rng.choice(_TEMPLATES).format(
        a=rng.choice(ADJECTIVES),
        n=rng.choice(NOUNS),
        n2=rng.choice(NOUNS),
        v=rng.choice(VERBS),
        vi=rng.choice(INTRANSITIVE_VERBS),
        adv=rng.choice(ADVERBS),
    )
    return text[0].upper() + text[1:] + "."


MAX_KEYS = min(len(KEY_COLOURS), len(KEY_ANIMALS))


def key_words(rng: random.Random, k: int) -> list[str]:
    """`k` needle keys such as ``amber-otter`` (a colour and an animal, which the haystack never contains);
    no two keys of one document share a word."""
    return [f"{c}-{a}" for c, a in zip(rng.sample(KEY_COLOURS, k), rng.sample(KEY_ANIMALS, k), strict=True)]


def key_word(rng: random.Random) -> str:
    """One needle key (keys drawn one by one may share words)."""
    return f"{rng.choice(KEY_COLOURS)}-{rng.choice(KEY_ANIMALS)}"
