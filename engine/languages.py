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


def resolve_language(language: str | None) -> str | None:
    """'en', 'EN', 'english', 'English' -> 'English'; None or '' -> None (auto-detect)."""
    if language is None or not language.strip():
        return None
    name = _LOOKUP.get(language.strip().lower().replace("_", "-").split("-")[0])
    if name is None:
        supported = ", ".join(f"{name} ({code})" for code, name in LANGUAGE_NAMES_BY_CODE.items())
        raise UnknownLanguageError(f"unsupported language {language!r}; supported: {supported}")
    return name


def language_code(name: str | None) -> str | None:
    return LANGUAGE_CODES_BY_NAME.get(name) if name else None
