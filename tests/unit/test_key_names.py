"""conductor/keys.py is the only spelling of Redis names, the Lua scripts included.

The scripts get every name as a constant rendered from keys.py into their text at load time
(conductor/scripts.py); these tests fail when a script spells a key prefix or suffix itself, or
uses a constant keys.py does not define (which Lua would take for nil, failing only when run).
"""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from conductor import keys, scripts

LUA_FILES = sorted(p for p in (files("conductor") / "lua").iterdir() if p.name.endswith(".lua"))
LUA_BUILTINS = {"KEYS", "ARGV"}


def lua_code_and_strings(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The code of a Lua file without comments and string literals, and its literals with their lines."""
    code, literals, i, line = [], [], 0, 1
    while i < len(text):
        char = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char in "'\"":
            end = i + 1
            while text[end] != char:
                end += 2 if text[end] == "\\" else 1
            literals.append((line, text[i + 1:end]))
            code.append(" ")
            i = end + 1
        else:
            line += char == "\n"
            code.append(char)
            i += 1
    return "".join(code), literals


def key_spellings(literal: str) -> bool:
    """A key suffix (':control') or anything spelled with one of keys.py's prefixes ('conductor:')."""
    prefixes = [value for value in scripts.key_names().values() if value.endswith(":") and len(value) > 1]
    return bool(re.match(r":[A-Za-z]", literal)) or any(prefix in literal for prefix in prefixes)


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_no_script_spells_a_key_name(path) -> None:
    _, literals = lua_code_and_strings(path.read_text())
    spelled = [f"{path.name}:{line}: '{literal}'" for line, literal in literals if key_spellings(literal)]
    assert spelled == [], ("a Lua script spells a Redis key name; declare it in conductor/keys.py "
                           "(e.g. NAME_SUFFIX = ':name') and use the constant, which every script is given")


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_every_constant_a_script_uses_is_defined_in_keys(path) -> None:
    code, _ = lua_code_and_strings(path.read_text())
    used = set(re.findall(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b", code)) - LUA_BUILTINS
    assert sorted(used - set(scripts.key_names())) == []


def test_the_checks_see_what_they_look_for() -> None:
    """The tokenizer finds a suffix in code and ignores one in a comment, so the two tests above can fail."""
    code, literals = lua_code_and_strings("local a = X_PREFIX .. id .. ':control' -- not ':drain'\n")
    assert [lit for _, lit in literals if key_spellings(lit)] == [":control"]
    assert "X_PREFIX" in code and "drain" not in code
    assert key_spellings("conductor:job:") and not key_spellings(":") and not key_spellings("task:")


def test_the_scripts_get_every_name_of_keys_py() -> None:
    prelude = scripts.prelude()
    for name in ("JOB_PREFIX", "JOB_CONTROL_SUFFIX", "NODE_FREE_CPUS_SUFFIX", "ARRAY_SKIP_SUFFIX", "WORKER_PREFIX"):
        assert f"local {name} = '{getattr(keys, name)}'\n" in prelude


def test_a_name_lua_cannot_quote_plainly_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "BAD_SUFFIX", ":it's", raising=False)
    with pytest.raises(ValueError, match="keys.BAD_SUFFIX"):
        scripts.key_names()
