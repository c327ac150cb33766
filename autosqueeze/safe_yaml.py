"""YAML read with bounds: ``yaml.safe_load`` plus a file size cap and a cap on the document's
size once its aliases are expanded.

``safe_load`` builds an alias as a reference to its anchor's object, so a "billion laughs"
document (nine levels of ten aliases each) loads in milliseconds, then exhausts memory in
whatever walks it next (validation, ``yaml.safe_dump``, a message quoting it). The loader
here counts, after composing and before constructing, how many nodes the document would
have with every alias expanded (memoized per node: the count costs the number of distinct
nodes) and refuses more than :data:`MAX_NODES`, or a recursive alias. Refusals are
:class:`YamlTooLarge`, a ``yaml.YAMLError``: callers that already say "not valid YAML" in
one line need nothing more.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 4 * 1024 * 1024  # a study, space or recipe file is a few KB
MAX_NODES = 200_000  # scalars, lists and mappings once aliases are expanded


class YamlTooLarge(yaml.YAMLError):
    """A document too large to read, or whose aliases expand beyond the bound."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with aliases expanded; raises on a recursive alias or past MAX_NODES."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlTooLarge("a recursive alias (a node that contains itself)")
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        open_nodes.add(key)
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise YamlTooLarge(f"more than {MAX_NODES:,} values once its aliases are expanded (an alias bomb?)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a document larger than MAX_NODES after alias expansion."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node)
        return node


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the bounds above."""
    if len(text) > MAX_BYTES:
        raise YamlTooLarge(f"{len(text):,} characters, more than the {MAX_BYTES:,} a settings file may have")
    import sys

    limit = sys.getrecursionlimit()
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:  # thousands of nested brackets
        raise YamlTooLarge(f"nested deeper than Python's recursion limit ({limit})") from None


def load_file(path: str | Path) -> Any:
    """Read ``path`` (UTF-8) and parse it with :func:`safe_load`; a file over MAX_BYTES is refused
    before it is read."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlTooLarge(f"{size:,} bytes, more than the {MAX_BYTES:,} a settings file may have")
    return safe_load(path.read_text(encoding="utf-8"))
