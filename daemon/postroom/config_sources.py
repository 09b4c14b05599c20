"""Where settings values come from: the TOML file, `POSTROOM_*` variables, and `*_file` secrets.

These are pydantic-settings sources that `load_settings` runs in order. pydantic-settings maps
variable names to keys (the prefix, `__` between a section and its key, any case); `EnvironSource`
points it at the environ the caller gives, never `os.environ`, so tests and the supervisor decide
what the daemon sees. `SecretFileSource` merges the layers and turns every `X_file = PATH` into
`X = <contents>`, the form systemd's `LoadCredential=` hands secrets over in. Problems are
collected with their key, never raised one at a time, so `check-config` shows them all.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from postroom.core.errors import ConfigError

SECRET_FILE_SUFFIX = "_file"


class TomlFileSource(PydanticBaseSettingsSource):
    """The one config file, read as it is: unknown keys stay, so validation can name them.

    pydantic-settings' own TOML source skips a missing file silently; a config path that was named
    but does not exist must stop the daemon instead.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.tree = read_toml(path) if path is not None else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.tree.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.tree


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file, or ConfigError under the key `config` saying why it cannot be used."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([("config", f"{path} does not exist")]) from None
    except OSError as exc:
        raise ConfigError([("config", f"cannot read {path}: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("config", f"{path} is not valid TOML: {exc}")]) from None


class EnvironSource(EnvSettingsSource):
    """`POSTROOM_SECTION__KEY` and `POSTROOM_KEY` from the given environ, names in any case.

    Prefix and delimiter come from the settings class's `model_config`. Variables that name no
    setting (POSTROOM_CONFIG, POSTROOM_CHILD_INDEX, POSTROOM_TEST_PG) are not looked at.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        # Set before the base class runs, because its constructor loads the variables.
        self.environ = environ
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The base class reads os.environ here; names are lowered to match case-insensitively.
        return {name.lower(): value for name, value in self.environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """A list or table key takes a TOML array or inline table (`["a", "b"]`, `[{name = "x"}]`),
        not the JSON pydantic-settings expects, so values are written as in the file. Anything else
        stays text for validation to convert, so "a, b" still reaches the comma-list validators."""
        if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
            try:
                return tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                pass  # not a literal: validation reports the text as it was given
        return value

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        # pydantic-settings only splits `__` names under the tables the model has, so
        # POSTROOM_DELIVRY__MODE or POSTROOM_STATE_DIR__X would be dropped without a word. A
        # misspelt section must fail at start like a bad key: pass it on for validation to name.
        prefix, delimiter = self.env_prefix.lower(), self.env_nested_delimiter or "__"
        fields = {name.lower(): field for name, field in self.settings_cls.model_fields.items()}
        for name, raw in self.env_vars.items():
            head, nested, rest = name.removeprefix(prefix).partition(delimiter)
            field = fields.get(head)
            if name.startswith(prefix) and nested and (field is None or not self.field_is_complex(field)):
                table = values.get(head)
                if not isinstance(table, dict):
                    table = values[head] = {}
                table[rest] = raw
        return values


class SecretFileSource(PydanticBaseSettingsSource):
    """The final values: `layers` merged, then every `X_file = PATH` read into `X`.

    Layers come lowest priority first and a later one wins key by key, tables merged, as
    BaseSettings merges its sources. Secret files are resolved after merging so that a key and its
    file form set in different places are still refused together. `%d` in PATH stands for
    $CREDENTIALS_DIRECTORY, as in systemd unit files. Problems are left in `problems`.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        layers: Sequence[PydanticBaseSettingsSource],
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(settings_cls)
        self.layers = tuple(layers)
        self.environ = environ
        self.problems: list[tuple[str, str]] = []

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: the values come whole from __call__, which reads the secret files once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in self.layers:
            merged = merge_tables(merged, layer())
        self.problems = []
        return self._resolve(merged, prefix="")

    def _resolve(self, table: dict[str, Any], prefix: str) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                resolved[key] = self._resolve(value, f"{prefix}{key}.")
                continue
            if not key.endswith(SECRET_FILE_SUFFIX):
                # setdefault: a secret read from its file wins over an empty inline value
                resolved.setdefault(key, value)
                continue
            target = key.removesuffix(SECRET_FILE_SUFFIX)
            if table.get(target):
                self.problems.append((f"{prefix}{key}", f"set either {target} or {key}, not both"))
                continue
            secret = self._read_secret(f"{prefix}{key}", str(value))
            if secret is not None:
                resolved[target] = secret
        return resolved

    def _read_secret(self, key: str, path: str) -> str | None:
        if "%d" in path:
            credentials = self.environ.get("CREDENTIALS_DIRECTORY")
            if not credentials:
                self.problems.append((key, "uses %d but $CREDENTIALS_DIRECTORY is not set "
                                      "(run under systemd with LoadCredential=, or give a full path)"))  # fmt: skip
                return None
            path = path.replace("%d", credentials)
        try:
            # The trailing newline editors and `echo` add is not part of the secret.
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            self.problems.append((key, f"cannot read {path}: {exc.strerror}"))
            return None


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: tables merge key by key, anything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = merge_tables(below, value)
        else:
            merged[key] = value
    return merged
