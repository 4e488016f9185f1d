"""Language codes: normalize what users write (``es``, ``pt-BR``, ``zh_Hant``, ``spa_Latn``) to ISO 639-1."""

from __future__ import annotations

# ISO 639-3 / FLORES codes of the languages moegate's suites use, and a few more.
_ISO3 = {
    "eng": "en", "spa": "es", "fra": "fr", "deu": "de", "ita": "it", "por": "pt", "nld": "nl",
    "rus": "ru", "ukr": "uk", "bul": "bg", "pol": "pl", "ces": "cs", "swe": "sv", "dan": "da",
    "nob": "no", "nor": "no", "fin": "fi", "hun": "hu", "ron": "ro", "tur": "tr", "ell": "el",
    "zho": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko", "arb": "ar", "ara": "ar", "pes": "fa",
    "fas": "fa", "heb": "he", "hin": "hi", "ben": "bn", "tha": "th", "vie": "vi", "ind": "id",
    "zsm": "ms", "msa": "ms", "cat": "ca", "tam": "ta", "urd": "ur", "swh": "sw", "swa": "sw",
}  # fmt: skip


def normalize_lang(code: str | None) -> str | None:
    """``"pt-BR"`` -> ``"pt"``, ``"spa_Latn"`` -> ``"es"``, ``"nb"`` -> ``"no"``; ``None`` or ``""`` -> ``None``."""
    if not code:
        return None
    primary = code.strip().replace("_", "-").split("-")[0].lower()
    primary = _ISO3.get(primary, primary)
    return {"nb": "no", "nn": "no", "iw": "he", "in": "id"}.get(primary, primary) or None
