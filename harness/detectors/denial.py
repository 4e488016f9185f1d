"""``denial``: the candidate says that what the baseline explains does not exist or is not real.

A pruned model "denied that monads exist". Denial phrases are few and formulaic ("there is no such
term as", "does not exist", "I'm not aware of any", "is not a real", "I couldn't find any
information"), so patterns find them (English, Spanish, French). What makes it a *regression* is the
comparison: a candidate denial counts only when the baseline has no denial of the same kind nor one
about the same words. A negation both share ("there is no largest prime") is not a denial. And a
denial of existence counts only when what it denies is the prompt's subject: "monads do not exist"
for a question about monads, not "the file does not exist" when explaining an error message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import regex

_THING = (
    r"(?:thing|term|concept|word|phrase|function|method|class|module|library|package|command|keyword|"
    r"feature|person|people|book|place|event|theorem|algorithm|language|technique|operator|construct|"
    r"entity|species|element|company|product|law|rule|principle|field|notion|expression|idiom|"
    r"término|concepto|palabra|cosa|función|persona|libro|lugar|terme|concept|mot|chose|fonction|personne|livre|lieu)"
)
_REALLY = r"(?:actually\s+|really\s+|truly\s+|in\s+fact\s+|realmente\s+|réellement\s+|vraiment\s+)?"
_BE_NOT = r"(?:is|are|was|were)\s*(?:not|n't)|isn't|aren't|wasn't|weren't"

# kind -> pattern, applied to casefolded text with straight apostrophes. Kinds ending in "_exist" or
# "_real" and "no_such" deny that a thing exists: they count only when the thing is the prompt's subject.
PATTERNS: dict[str, regex.Pattern[str]] = {
    name: regex.compile(pattern, regex.V1)
    for name, pattern in {
        "no_such": r"\bno\s+such\s+(?:a\s+)?\w+|\bthere\s+(?:is|are|'s)\s+no\s+(?:known|real|official|recognized|recognised|established|standard|widely\s+(?:accepted|known|recognized))\s+\w+",
        "en_exist": rf"\b(?:does|do|did)\s*(?:not|n't)\s+{_REALLY}exist\b|\b(?:never|no\s+longer)\s+existed?\b|\bnon-?existent\b",
        "en_real": rf"\b(?:{_BE_NOT})\s+(?:a|an)?\s*{_REALLY}(?:real|recognized|recognised|valid|genuine|legitimate|established|actual|existing)\b|\bis\s+not\s+a\s+thing\b|\b(?:is|are)\s+(?:a\s+|an\s+)?(?:entirely\s+|purely\s+)?(?:fictional|fictitious|made[- ]up|fabricated|invented)\s+{_THING}",
        "not_aware": r"\b(?:i\s+am|i'm)\s+not\s+(?:aware|familiar)\s+(?:of|with)\b|\bi\s+(?:do\s+not|don't)\s+(?:recognize|recognise)\b|\bi(?:\s+have|'ve)\s+never\s+heard\s+of\b",
        "no_info": r"\bi\s+(?:could|can|was|am)\s*(?:not|n't|unable\s+to)\s+(?:able\s+to\s+)?(?:find|locate)\s+(?:any\s+)?(?:information|reference|record|evidence|mention|details)|\bi\s+(?:do\s+not|don't)\s+have\s+(?:any\s+)?(?:information|knowledge|details)\s+(?:about|on|of|regarding)\b",
        "es_exist": rf"\bno\s+existen?\b|\bno\s+(?:hay|existe)\s+(?:ningún|ninguna|tal)\b|\bno\s+es\s+una?\s+{_THING}\s+(?:real|reconocid[oa]|válid[oa])",
        "es_unknown": r"\bno\s+(?:conozco|tengo\s+(?:conocimiento|información))\b|\bno\s+(?:pude|he\s+podido)\s+encontrar\b",
        "fr_exist": rf"\bn'existe(?:nt)?\s+pas\b|\bil\s+n'y\s+a\s+pas\s+de\s+tel(?:le)?s?\b|\bn'est\s+pas\s+une?\s+{_THING}\s+(?:réel(?:le)?|reconnue?|valide)",
        "fr_unknown": r"\bje\s+ne\s+(?:connais\s+pas|suis\s+pas\s+au\s+courant)\b|\bje\s+n'ai\s+(?:pas\s+)?trouvé\s+aucune?\b|\baucune\s+information\s+sur\b",
    }.items()
}  # fmt: skip
_EXISTENCE_KINDS = frozenset({"no_such", "en_exist", "en_real", "es_exist", "fr_exist"})

_WORD = regex.compile(r"\p{L}[\p{L}\p{M}'-]{2,}")  # 3+ letters: acronyms such as DNS, TCP count
_STOPWORDS = (
    "that this there these those such does exist with have about what which from your into than then "
    "they their them will would could should know aware familiar information find real thing term "
    "concept word term actually really being been were some sure also only just like here more most "
    "existe hay ningún ninguna tengo información pude encontrar término concepto palabra este esta "
    "pas aucune existe terme mot connais réel "
    "explain describe tell give write show mean work please where when whose can how why state "
    "explica describe dime cómo qué explique énonce comment quel quelle "
    "the and for not but are was you his her its our who why how can may all any one two out use has had "
    "did get got let see yes les des une que los las del por con sus más est pas qui aux son una uno"
)
_STOP = frozenset(_STOPWORDS.split())


@dataclass(frozen=True)
class DenialHit:
    kind: str
    phrase: str
    context: frozenset[str]
    """Content words within a few words of the phrase: what the denial is about."""
    near: frozenset[str]
    """Content words of the 3 words before and 5 after: the thing denied ("monads do not exist")."""


def normalize(text: str) -> str:
    """Casefold, straight apostrophes, single spaces: what the patterns expect."""
    return regex.sub(r"\s+", " ", text.replace("’", "'").replace("‘", "'").casefold())


def _content_words(text: str) -> frozenset[str]:
    # crude plural folding ("monads" ~ "monad") so the prompt's subject matches the answer's
    return frozenset(w.removesuffix("s") for w in _WORD.findall(text) if w not in _STOP)


def denial_hits(text: str, window: int = 60) -> list[DenialHit]:
    """Every denial phrase in ``text`` with the content words around it."""
    norm = normalize(text)
    hits = []
    for kind, pattern in PATTERNS.items():
        for m in pattern.finditer(norm):
            around = norm[max(0, m.start() - window) : m.end() + window]
            before = " ".join(norm[: m.start()].split()[-3:])
            after = " ".join(norm[m.end() :].split()[:5])
            near = _content_words(f"{before} {m.group(0)} {after}")
            hits.append(DenialHit(kind, m.group(0).strip(), _content_words(around), near))
    return hits


def _shared(hit: DenialHit, baseline_hits: list[DenialHit]) -> bool:
    return any(b.kind == hit.kind or (b.context & hit.context) for b in baseline_hits)


def denial(candidate: str, baseline: str, *, prompt: str = "") -> dict[str, Any] | None:
    """Evidence that ``candidate`` denies something the baseline does not deny, or ``None``."""
    cand_hits = denial_hits(candidate)
    if not cand_hits:
        return None
    prompt_words = _content_words(normalize(prompt))
    if prompt_words:
        # "the file does not exist" explains an error; "monads do not exist" denies the subject
        cand_hits = [h for h in cand_hits if h.kind not in _EXISTENCE_KINDS or h.near & prompt_words]
    base_hits = denial_hits(baseline)
    new = [h for h in cand_hits if not _shared(h, base_hits)]
    if not new:
        return None
    return {
        "phrases": [h.phrase for h in new][:10],
        "kinds": sorted({h.kind for h in new}),
        "about_prompt": sorted(set().union(*(h.near & prompt_words for h in new)))[:10],
        "baseline_phrases": [h.phrase for h in base_hits][:10],
    }
