"""The filler text of the long-context tasks, generated here from small word lists (no downloads).

Sentences are lowercase English words with a capital first letter and a full stop: no digits, no
hyphens, no all-capital words, none of the needle key words. So a number, a hyphenated key or a
variable name found in a haystack can only have come from a needle.
"""

from __future__ import annotations

import random

ADJECTIVES = (
    "quiet", "old", "small", "bright", "narrow", "green", "heavy", "gentle", "distant", "warm", "cold",
    "patient", "busy", "simple", "tall", "round", "early", "late", "plain", "soft", "wide", "careful",
    "sudden", "steady", "pale", "rough", "clever", "humble", "empty", "crowded",
)
NOUNS = (
    "river", "village", "farmer", "teacher", "bridge", "garden", "market", "window", "letter", "road",
    "forest", "harbor", "miller", "doctor", "library", "valley", "tower", "kitchen", "engine", "field",
    "painter", "sailor", "baker", "lantern", "wagon", "orchard", "meadow", "station", "clock", "school",
    "table", "island", "workshop", "mountain", "cottage", "student", "traveler", "council", "merchant",
)
VERBS = (
    "watched", "repaired", "visited", "followed", "painted", "carried", "described", "crossed", "opened",
    "cleaned", "counted", "measured", "remembered", "admired", "passed", "guarded", "praised", "studied",
    "built", "found", "moved", "noticed", "closed", "reached",
)
ADVERBS = (
    "slowly", "quickly", "often", "rarely", "again", "carefully", "gladly", "quietly", "once", "never",
    "always", "happily",
)
TIMES = (
    "in the morning", "after the rain", "before the winter", "at noon", "during the fair", "every spring",
    "on that evening", "at dawn", "in the autumn", "after supper",
)
PLACES = (
    "near the river", "by the old mill", "across the valley", "behind the school", "along the road",
    "under the bridge", "beside the harbor", "at the market", "inside the tower", "past the orchard",
)

_TEMPLATES = (
    "the {a} {n} {v} the {n2} {p}",
    "{t} the {n} {adv} {v} a {a} {n2}",
    "a {a} {n} {v} the {a2} {n2} {t}",
    "the {n} {v} the {n2} {p} {t}",
    "nobody {v} the {a} {n} {p}",
    "the {n} and the {n2} {adv} {v} the {a} {n3}",
)

# Words the haystack can never contain: every key word of the needles is drawn from here.
KEY_WORDS = (
    "azure", "cobalt", "crimson", "amber", "ivory", "jade", "scarlet", "violet", "ochre", "teal", "umber",
    "indigo", "maroon", "saffron", "sienna", "topaz", "falcon", "otter", "badger", "heron", "lynx", "marten",
    "osprey", "puffin", "raven", "stoat", "tapir", "walrus", "yak", "zebra", "bison", "coyote", "ferret",
    "gecko", "ibis", "jackal", "koala", "lemur", "mongoose", "newt",
)


def sentence(rng: random.Random) -> str:
    """One haystack sentence."""
    text = rng.choice(_TEMPLATES).format(
        a=rng.choice(ADJECTIVES), a2=rng.choice(ADJECTIVES), n=rng.choice(NOUNS), n2=rng.choice(NOUNS),
        n3=rng.choice(NOUNS), v=rng.choice(VERBS), adv=rng.choice(ADVERBS), t=rng.choice(TIMES),
        p=rng.choice(PLACES),
    )
    return text[0].upper() + text[1:] + "."


def key_word(rng: random.Random) -> str:
    """A needle key such as ``amber-otter``: two key words, which the haystack never contains."""
    first, second = rng.sample(KEY_WORDS, 2)
    return f"{first}-{second}"
