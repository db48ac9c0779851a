"""How a simulated node answers SSH commands: ordered rules, first match wins, default success."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster.simulated.faults import one_line


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioRule(_Strict):
    match: str = Field(description="Python regex searched in the command text (and its stdin script)")
    exit_code: int = Field(0, ge=0, le=255)
    stdout: str = ""
    stderr: str = ""
    delay: float = Field(0.0, ge=0.0, description="seconds to wait before answering")

    @field_validator("match")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
        return value


class Answer(_Strict):
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    delay: float = 0.0


SUCCESS = Answer()


class Scenario(_Strict):
    rules: list[ScenarioRule] = Field(default_factory=list)

    def answer(self, command: str) -> Answer | None:
        """The first matching rule's answer, or None when no rule matches."""
        for rule in self.rules:
            if re.search(rule.match, command):
                return Answer(exit_code=rule.exit_code, stdout=rule.stdout, stderr=rule.stderr, delay=rule.delay)
        return None

    @classmethod
    def from_file(cls, path: Path) -> Scenario:
        """Load a YAML scenario: either `{rules: [...]}` or a bare list of rules."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"scenario {path}: {exc}") from exc
        if isinstance(data, list):
            data = {"rules": data}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"scenario {path}: {one_line(exc)}") from None
