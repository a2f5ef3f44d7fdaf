"""The option reference of docs/policies.md, made from the config schemas."""

from __future__ import annotations

from collections.abc import Sequence

from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA, Kind, Option


def _default_text(option: Option) -> str:
    if option.default is not None:
        return f"`{option.default}`"
    if option.required:
        return "required"
    return option.default_note or "none"


def _schema_section(schema: Sequence[Option], title: str) -> list[str]:
    lines = [f"### {title}", ""]
    for option in schema:
        if option.kind is Kind.SECTION:
            lines += [f"#### `{option.path}:` (section)", "", option.description, ""]
            if option.required:
                lines += ["- required", ""]
            elif option.default_note:
                lines += [f"- default: {option.default_note}", ""]
            continue
        lines += [
            f"#### `{option.path}`",
            "",
            option.description,
            "",
            f"- type: {option.type_text}",
            f"- default: {_default_text(option)}",
        ]
        if option.example is not None:
            lines.append(f"- example: `{option.key}: {option.example}`")
        lines.append("")
    return lines


def schema_markdown() -> str:
    """The option reference of docs/policies.md, made from the schemas."""
    lines = _schema_section(POLICY_SCHEMA, "Policy files (policies.d/*.yaml)")
    lines += _schema_section(CONFIG_SCHEMA, "Daemon settings (snapshotd.yaml)")
    return "\n".join(lines).rstrip("\n") + "\n"
