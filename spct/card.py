"""What a saved model needs to be used as it was trained: its card, `spct.json`, beside the HF files.

Every model folder spct saves (a GRM, a policy, a meta RM) holds a card: the role, the settings
scoring or generating with it needs (a GRM's prompt templates, score scales, context length,
critique length and dtype; a meta RM's input length, dtype and input template), and which run
and phase made it. A GRM's templates are copied into the folder (`spct_template.j2`,
`spct_single_template.j2`), and so is a meta RM's input template (`spct_meta_rm_input.j2`), so
the folder keeps the exact wording it was trained with even when the original file moves or a
built-in template changes.

`resolve` decides each setting: a value set in the configuration, else the card's, else the
default. A set value that disagrees with the card wins, with a warning naming both. A folder
without a card (a hub model, a model saved by another tool) uses the configuration as it is.
Plain logic: json, files and spct.grm's templates only.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spct.files import write_atomic
from spct.grm import BUILTIN_TEMPLATES, load_template
from spct.grm.template import TEMPLATE_DIR

CARD = "spct.json"
VERSION = 1
ROLES = ("grm", "policy", "meta_rm")
# The settings a GRM's card records (ModelConfig's fields of the same names).
GRM_KEYS = ("template", "single_template", "dtype", "max_model_len", "max_new_tokens")
GRM_TEMPLATE_KEYS = ("template", "single_template")
TEMPLATE_KEYS = (*GRM_TEMPLATE_KEYS, "input_template")  # input_template: a meta RM's
TEMPLATE_FILES = {"template": "spct_template.j2", "single_template": "spct_single_template.j2",
                  "input_template": "spct_meta_rm_input.j2"}


class CardError(ValueError):
    """A card that cannot be read: the message names the file and the field."""


def card_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder).expanduser() / CARD


def write_card(folder: str | os.PathLike[str], role: str, settings: Mapping[str, Any],
               produced_by: Mapping[str, Any]) -> Path:
    """Write `folder`/spct.json (and a GRM's template files) for a model just saved there.

    `settings` are the role's resolved settings (template names or paths for a GRM);
    `produced_by` says which run and phase made it (output_dir, phase, step, seed)."""
    if role not in ROLES:
        raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
    folder = Path(folder)
    record: dict[str, Any] = {"spct_card": VERSION, "role": role, "settings": dict(settings),
                              "produced_by": {**produced_by, "saved": _now()}}
    if role == "grm":
        scales = {}
        for key in GRM_TEMPLATE_KEYS:
            template = load_template(settings[key])
            (folder / TEMPLATE_FILES[key]).write_text(template.source, encoding="utf-8")
            scales[key] = [template.low, template.high]
        record["score_scale"] = scales
        record["template_files"] = {k: TEMPLATE_FILES[k] for k in GRM_TEMPLATE_KEYS}
    if role == "meta_rm" and settings.get("input_template"):
        source = Path(settings["input_template"]).expanduser().read_text(encoding="utf-8")
        (folder / TEMPLATE_FILES["input_template"]).write_text(source, encoding="utf-8")
        record["template_files"] = {"input_template": TEMPLATE_FILES["input_template"]}
    return write_atomic(folder / CARD, json.dumps(record, indent=1) + "\n")


def read_card(folder: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The card of a local model folder, or None (no folder, a hub id, no card)."""
    if not folder:
        return None
    path = card_path(folder)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardError(f"{path}: not a readable spct model card ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise CardError(f"{path}: field 'settings': expected an object")
    if record.get("role") not in ROLES:
        raise CardError(f"{path}: field 'role': expected one of {ROLES}, got {record.get('role')!r}")
    return record


def card_settings(record: Mapping[str, Any], folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A card's settings as a configuration would name them: a GRM's templates by their
    built-in name when the copy in the folder is that template's current text, else by the
    path of the copy (the exact text the GRM was trained with)."""
    settings = dict(record["settings"])
    for key in TEMPLATE_KEYS:
        if settings.get(key) is None:
            continue
        copy = Path(folder).expanduser() / record.get("template_files", TEMPLATE_FILES).get(key, TEMPLATE_FILES[key])
        if not copy.is_file():
            continue  # a card without its copy: the name as recorded
        name = settings[key]
        if name in BUILTIN_TEMPLATES and (TEMPLATE_DIR / f"{name}.j2").read_text(encoding="utf-8") == \
                copy.read_text(encoding="utf-8"):
            continue
        if isinstance(name, str) and Path(name).expanduser().is_file() and \
                Path(name).expanduser().read_text(encoding="utf-8") == copy.read_text(encoding="utf-8"):
            continue
        settings[key] = str(copy.resolve())
    return settings


def same_setting(key: str, a: Any, b: Any) -> bool:
    """Whether two values of a setting mean the same: templates by their text, else equality."""
    if a == b:
        return True
    if key in TEMPLATE_KEYS and a is not None and b is not None:
        try:
            return load_template(a).source == load_template(b).source
        except (OSError, ValueError):
            return False
    return False


def resolve(explicit: Mapping[str, Any], folder: str | os.PathLike[str] | None, defaults: Mapping[str, Any],
            prefix: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Each key of `defaults`: `explicit`'s value unless None, else the card's, else the default.

    Returns (values, source of each: "set", "checkpoint" or "default", warnings). A set value
    that differs from the card's is kept and warned about, naming `prefix`.key and both values."""
    record = read_card(folder)
    card = card_settings(record, folder) if record else {}
    values, sources, warnings = {}, {}, []
    for key, default in defaults.items():
        mine, theirs = explicit.get(key), card.get(key)
        if mine is not None:
            values[key], sources[key] = mine, "set"
            if theirs is not None and not same_setting(key, mine, theirs):
                warnings.append(f"{prefix}{key}={mine!r} differs from what {card_path(folder)} records "
                                f"({theirs!r}); using {mine!r}")
        elif theirs is not None:
            values[key], sources[key] = theirs, "checkpoint"
        else:
            values[key], sources[key] = default, "default"
    return values, sources, warnings


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
