"""``module_sdk.i18n``: translated strings from a catalog the runtime (or a test) is given.

The signature is the platform's: ``t(key, context=None, lang=None)``, where *context* holds
the values interpolated with ``str.format`` (the platform's translation service does the
same). The language is *lang*, else the session's ``user_language``, else the user's
``language``, else the runtime's default. A key missing in that language is looked up in the
default language, then in English; a key found nowhere translates to itself, so a test that
gives no catalog sees the keys.
"""

from __future__ import annotations

from typing import Any


class I18n:
    """``module_sdk.i18n``: ``t(key, context=None, lang=None)`` and ``get_user_language()``."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk

    def get_user_language(self, user_id: Any = None) -> str:
        """The language of the session's user (``user_language`` in the session, else the
        user's ``language``), else the runtime's default language. *user_id* is accepted for
        the platform's signature; the reference knows only the session's user."""
        session = self.sdk.session if isinstance(self.sdk.session, dict) else {}
        chosen = session.get("user_language")
        if not (isinstance(chosen, str) and chosen.strip()):
            user = session.get("user")
            chosen = user.get("language") if isinstance(user, dict) else None
        if isinstance(chosen, str) and chosen.strip():
            return chosen.strip().lower()
        return str(self.sdk.host.default_language)

    def t(self, key: str, context: dict[str, Any] | None = None, lang: str | None = None) -> str:
        """Translate a fully qualified *key* (``"system.model.catalog.action.download"``).

        Args:
            key: the key; the module name is not prepended.
            context: values for the ``{name}`` placeholders of the text.
            lang: the language, instead of the session's.
        """
        catalog = self.sdk.host.translations
        default = str(self.sdk.host.default_language)
        language = lang or self.get_user_language()
        text: str | None = None
        for candidate in dict.fromkeys((language, default, "en")):
            text = catalog.get(candidate, {}).get(key)
            if text is not None:
                break
        if text is None:
            return key
        if context:
            try:
                return text.format(**context)
            except (KeyError, IndexError, ValueError):  # as the platform: the text unformatted
                return text
        return text
