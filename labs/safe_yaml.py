"""YAML for files written by strangers: bounded size, depth and alias expansion.

PyYAML's SafeLoader refuses arbitrary objects but not a "billion laughs" file: ten levels of anchors,
each alias repeating the previous level ten times, is a few hundred bytes that expand to 10^10 nodes
for whatever walks the tree afterwards (our duplicate-key scan, pydantic). Nothing here walks an
expanded tree: the expanded size is computed on the node graph (each node once) and refused above
`MAX_EXPANDED_NODES`; aliases are capped at `MAX_ALIASES` (node-classes.yaml shares build recipes
with a few; a lab file needs none); nesting is capped at `MAX_DEPTH` (PyYAML's composer recurses).

Errors are `YamlRefused` with the line and column of the offending node (1-based).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_FILE_BYTES = 128 * 1024
MAX_ALIASES = 64
MAX_EXPANDED_NODES = 20_000
MAX_DEPTH = 40


class YamlRefused(ValueError):
    """A YAML document outside the bounds; `line`/`column` are 1-based."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlRefused(f"more than {MAX_ALIASES} aliases (*name)", mark.line + 1, mark.column + 1)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose alias expansion exceeds MAX_EXPANDED_NODES (computed without expanding)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:  # a recursive alias (&a [*a]): infinite expansion
            mark = node.start_mark
            raise YamlRefused("recursive alias", mark.line + 1, mark.column + 1)
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        visiting.discard(key)
        sizes[key] = total
        if total > MAX_EXPANDED_NODES:
            mark = node.start_mark
            raise YamlRefused(
                f"expands to more than {MAX_EXPANDED_NODES} values (aliases repeat their anchor's content)",
                mark.line + 1, mark.column + 1,
            )
        return total

    size(root)


def compose(text: str) -> tuple[BoundedLoader, yaml.Node | None]:
    """The node tree of a single-document text, checked; the caller disposes of the loader."""
    if len(text.encode("utf-8", errors="replace")) > MAX_FILE_BYTES:
        raise YamlRefused(f"larger than {MAX_FILE_BYTES // 1024} KiB")
    loader = BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            check_expansion(root)
    except BaseException:
        loader.dispose()
        raise
    return loader, root


def safe_load(text: str) -> Any:
    """`yaml.safe_load` within the bounds above (YamlRefused or yaml.YAMLError otherwise)."""
    loader, root = compose(text)
    try:
        return None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()
