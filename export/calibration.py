"""The pairs the `int8-static` quantization calibrates its activation scales on.

Shipped with the exporter and kept apart from the self-check's built-in pairs (report.py) and from the
benchmarks' agreement pairs, so that neither measures the quantization on what it was fitted to. Queries and documents
of several kinds, languages and lengths; each query meets every document once (relevant and unrelated alike),
so the scales see the activations of both high- and low-scoring prompts.
"""

from __future__ import annotations

CALIBRATION_QUERIES = [
    "how does photosynthesis work",
    "best way to learn a second language as an adult",
    "symptoms of vitamin D deficiency",
    "rust borrow checker mutable reference error",
    "Wer hat die Relativitätstheorie entwickelt?",
    "capital gains tax on selling a house",
    "why is the sky blue",
    "SELECT with GROUP BY and HAVING example",
]

CALIBRATION_DOCUMENTS = [
    "Photosynthesis converts light energy into chemical energy: chlorophyll absorbs light, water is split, "
    "oxygen is released, and the Calvin cycle fixes carbon dioxide into sugars inside the chloroplast.",
    "Adults learn languages well with spaced repetition, daily listening and speaking practice, and graded "
    "reading; immersion and a conversation partner help more than memorizing grammar tables.",
    "Vitamin D deficiency can cause fatigue, bone pain, muscle weakness and low mood; a blood test of "
    "25-hydroxyvitamin D confirms it, and supplements or sunlight usually correct it.",
    "error[E0499]: cannot borrow `v` as mutable more than once at a time. Split the borrow, shorten the first "
    "reference's scope, or use indices instead of holding two &mut references.",
    "Albert Einstein veröffentlichte 1905 die spezielle und 1915 die allgemeine Relativitätstheorie.",
    "When you sell your main home you may exclude up to $250,000 of gain ($500,000 for a married couple) if you "
    "owned and lived in it for two of the last five years; the rest is taxed as a capital gain.",
    "Sunlight is scattered by the molecules of the air, and shorter blue wavelengths scatter far more than red "
    "ones (Rayleigh scattering), so the sky looks blue in daytime.",
    "SELECT department, COUNT(*) AS staff FROM employees GROUP BY department HAVING COUNT(*) > 10;",
    "The museum is open from 9 am to 5 pm, Tuesday to Sunday; tickets are half price for students.",
    "Le marché couvert ouvre le samedi matin ; on y trouve des fromages, du pain et des légumes de saison.",
    "In 1969 Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on the surface while Michael "
    "Collins orbited above in the command module.",
    "To make a sourdough starter, mix equal weights of flour and water, keep it warm, and feed it daily for "
    "about a week until it doubles within a few hours of feeding.",
    "東京は日本の首都であり、世界でも有数の大都市圏です。",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "Quarterly revenue rose 12% year over year, driven by subscription growth, while operating margin "
    "narrowed because of higher cloud infrastructure costs and one-off restructuring charges.",
    "",
]


def calibration_pairs() -> tuple[list[str], list[str]]:
    """Every query with every document: (queries, documents), parallel."""
    queries = [q for q in CALIBRATION_QUERIES for _ in CALIBRATION_DOCUMENTS]
    documents = [d for _ in CALIBRATION_QUERIES for d in CALIBRATION_DOCUMENTS]
    return queries, documents
