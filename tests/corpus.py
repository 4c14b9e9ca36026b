"""A deterministic corpus of short news-like articles rich in names, for counting tests."""

from __future__ import annotations

import random

PEOPLE = ["Angela Merkel", "Barack Obama", "Emmanuel Macron", "Jacinda Ardern", "Olaf Scholz", "Kamala Harris",
          "Narendra Modi", "Xi Jinping", "Rishi Sunak", "Lula da Silva", "Elon Musk", "Taylor Swift"]
PLACES = ["Berlin", "Paris", "London", "New York", "Tokyo", "Nairobi", "Brazil", "Canada", "India", "Mexico City"]
ORGS = ["the United Nations", "Microsoft", "the European Union", "NATO", "Google", "the World Bank", "Reuters",
        "the Red Cross", "Toyota", "the BBC"]
PUBLICATIONS = ["The Daily Planet", "the daily  planet", "Gotham Gazette", "Metro Times", "METRO TIMES", "Al Jazeera"]

TEMPLATES = [
    "{p1} met {p2} in {pl1} on Tuesday to discuss trade with {o1}.",
    "Officials from {o1} said {p1} would travel to {pl1} and later to {pl2}.",
    "{p2} criticised {o2} after a summit in {pl2} attended by {p1}.",
    "In {pl1}, {o1} and {o2} announced a partnership; {p1} welcomed it.",
    "Thousands gathered in {pl2} as {p2} spoke about {o2} and {pl1}.",
    # counting rules v2: a possessive, a leading "the", and a surname alone after the full name
    "{p1}'s aides said {o1}'s office in {pl1} was ready. Later {last1} said so again.",
]


def articles(n: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            t = rng.choice(TEMPLATES)
            p1 = rng.choice(PEOPLE)
            sentences.append(t.format(p1=p1, p2=rng.choice(PEOPLE), pl1=rng.choice(PLACES), last1=p1.split()[-1],
                                      pl2=rng.choice(PLACES), o1=rng.choice(ORGS), o2=rng.choice(ORGS)))
        out.append((rng.choice(PUBLICATIONS), f"Report {i}. " + " ".join(sentences)))
    return out
