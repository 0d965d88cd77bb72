"""Every user-facing string has a Swedish translation, and pages follow the chosen language."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
METHODS = [
    ("newsletter/**.py", "python"),
    ("templates/**.html", "jinja2"),
    ("templates/**.txt", "jinja2"),
]


def _extracted_msgids() -> set[str]:
    ids: set[str] = set()
    for _filename, _lineno, message, _comments, _context in extract_from_dir(
        str(ROOT), METHODS, options_map={"templates/**": {"extensions": "jinja2.ext.i18n"}},
        keywords={**DEFAULT_KEYWORDS, "_l": None, "N_": None, "lazy_gettext": None, "lazy_ngettext": (1, 2)},
    ):
        ids.add(message[0] if isinstance(message, tuple) else message)
    return ids


def test_every_string_has_a_swedish_translation():
    with (ROOT / "newsletter/translations/sv/LC_MESSAGES/messages.po").open("rb") as handle:
        catalog = read_po(handle, locale="sv")
    translated = {m.id if isinstance(m.id, str) else m.id[0] for m in catalog if m.id and m.string
                  and (m.string if isinstance(m.string, str) else all(m.string))}
    missing = sorted(_extracted_msgids() - translated)
    assert not missing, f"no Swedish translation in sv/LC_MESSAGES/messages.po for: {missing}"



def test_the_catalogues_parse_strictly_without_duplicates():
    # A union merge of two branches' .po files can leave a msgid twice or without its msgstr.
    for language in ("sv", "en"):
        path = ROOT / f"newsletter/translations/{language}/LC_MESSAGES/messages.po"
        with path.open("rb") as handle:
            read_po(handle, locale=language, abort_invalid=True)
        msgids = [line for line in path.read_text("utf-8").splitlines() if line.startswith('msgid "')]
        duplicates = sorted({m for m in msgids if msgids.count(m) > 1} - {'msgid ""'})
        assert not duplicates, f"{path.name} ({language}) has these msgids twice: {duplicates}"
