# The 30 languages Qwen3-ASR was trained to transcribe, as the names its forced-language prefix uses.
LANGUAGE_NAMES_BY_CODE = {
    "ar": "Arabic", "yue": "Cantonese", "zh": "Chinese", "cs": "Czech", "da": "Danish", "nl": "Dutch",
    "en": "English", "fil": "Filipino", "fi": "Finnish", "fr": "French", "de": "German", "el": "Greek",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "mk": "Macedonian", "ms": "Malay", "fa": "Persian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "es": "Spanish", "sv": "Swedish", "th": "Thai", "tr": "Turkish", "vi": "Vietnamese",
}
LANGUAGE_CODES_BY_NAME = {name: code for code, name in LANGUAGE_NAMES_BY_CODE.items()}
_LOOKUP = {key.lower(): name for code, name in LANGUAGE_NAMES_BY_CODE.items() for key in (code, name)}


class UnknownLanguageError(ValueError):
    pass


class Language(str):
    """One of the 30 languages, resolved: the string is its name as the prompt writes it ("English"), `code` its
    ISO 639 code ("en"). Made by resolve_language from whatever a client sent, once, at the edge."""

    def __new__(cls, name: str) -> "Language":
        if name not in LANGUAGE_CODES_BY_NAME:
            raise UnknownLanguageError(f"{name!r} is not one of the languages' names; use resolve_language")
        return super().__new__(cls, name)

    @property
    def code(self) -> str:
        return LANGUAGE_CODES_BY_NAME[self]


def resolve_language(language: str | None) -> Language | None:
    """'en', 'EN', 'english', 'English', 'en-US' -> English; None or '' -> None (the model detects it)."""
    if language is None or isinstance(language, Language):
        return language
    if not language.strip():
        return None
    name = _LOOKUP.get(language.strip().lower().replace("_", "-").split("-")[0])
    if name is None:
        supported = ", ".join(f"{name} ({code})" for code, name in LANGUAGE_NAMES_BY_CODE.items())
        raise UnknownLanguageError(f"unsupported language {language!r}; supported: {supported}")
    return Language(name)


def language_code(language: str | None) -> str | None:
    """The ISO code of a transcript's language; None when none was found or the model named one of its own."""
    return language.code if isinstance(language, Language) else None


def detected_language(name: str | None) -> str | None:
    """The language a transcript names: a Language when it is one of the 30, else the model's own word."""
    return Language(name) if name in LANGUAGE_CODES_BY_NAME else name
