"""Load the jinja2 templates in `prompts/` (shipped inside the wheel as `middleware/_prompts`).

Every value a template prints (`{{ ... }}`) goes through `neutralize`, the environment's `finalize`
hook: user-derived text can never write a tag. `<`, `>` and `&` become the entities `&lt;`, `&gt;`
and `&amp;`; characters that read like an angle bracket (fullwidth and small forms, angle quotation
marks, CJK and mathematical angle brackets, arrowhead letters) and the invisible Unicode tag
characters become numeric entities. Escaping `&` too makes it lossless: `html.unescape` gives the
original text back, and no input, however nested, can produce a delimiter after escaping.
Templates write their own delimiters literally, outside `{{ }}`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

_PACKAGE_DIR = Path(__file__).resolve().parent

# Characters a reader (or a model) could take for `<` or `>`; escaped as numeric entities.
ANGLE_LOOKALIKES = frozenset(
    "\u00ab\u00bb"  # « » angle quotation marks
    "\u02c2\u02c3\u02f1\u02f2"  # ˂ ˃ ˱ ˲ modifier letter arrowheads
    "\u0350\u0354\u0355\u0356\u1dfe\u1dff"  # combining arrowheads
    "\u08f7\u08f8\u08f9\u08fa\u08fb\u08fc\u08fd"  # Arabic combining arrowheads
    "\u1438\u1433"  # ᐸ ᐳ Canadian syllabics that look like < >
    "\u2039\u203a"  # ‹ › single angle quotation marks
    "\u2329\u232a"  # 〈 〉 angle brackets
    "\u276c\u276d\u276e\u276f\u2770\u2771"  # ❬ ❭ ❮ ❯ ❰ ❱ ornaments
    "\u27e8\u27e9\u27ea\u27eb"  # ⟨ ⟩ ⟪ ⟫ mathematical angle brackets
    "\u2991\u2992\u29fc\u29fd"  # ⦑ ⦒ ⧼ ⧽
    "\u3008\u3009\u300a\u300b"  # 〈 〉 《 》 CJK angle brackets
    "\ufe3d\ufe3e\ufe3f\ufe40"  # ︽ ︾ ︿ ﹀ vertical presentation forms
    "\ufe64\ufe65"  # ﹤ ﹥ small forms
    "\uff1c\uff1e"  # ＜ ＞ fullwidth forms
)
# Unicode "tag" characters (U+E0000..U+E007F) are invisible but readable by models.
_TAG_CHARACTERS = range(0xE0000, 0xE0080)

_ESCAPES: dict[int, str] = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"}
_ESCAPES.update({ord(c): f"&#x{ord(c):x};" for c in ANGLE_LOOKALIKES})
_ESCAPES.update({cp: f"&#x{cp:x};" for cp in _TAG_CHARACTERS})


def neutralize(value: object) -> str:
    """The text of `value` with every tag-forming character escaped as an entity."""
    return str(value).translate(_ESCAPES)


def escaped_length(text: str) -> int:
    """How long `text` is once neutralized."""
    return len(text.translate(_ESCAPES))


def prompts_dir() -> Path:
    for candidate in (_PACKAGE_DIR / "_prompts", _PACKAGE_DIR.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("prompt templates not found (expected prompts/ beside the package)")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(prompts_dir()),
        autoescape=False,
        finalize=neutralize,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )


def render(name: str, **values: object) -> str:
    """Render `prompts/<name>` with the given values (every printed value neutralized)."""
    return environment().get_template(name).render(**values).strip()
