"""YAML through the safe loader only, with limits that make every document cheap to load.

Every YAML file hwsbs reads (profiles, lookup tables, ``config.yaml``, search spaces) is parsed
here. On top of PyYAML's ``SafeLoader`` (no Python objects) the loader refuses:

- duplicate keys (PyYAML silently keeps the last one);
- mapping keys that are lists or mappings;
- nesting deeper than :data:`MAX_DEPTH` levels (aliases counted where they are used), which
  would otherwise end in a RecursionError;
- more than :data:`MAX_ALIASES` aliases (``*name``), aliases that together stand for more than
  :data:`MAX_ALIAS_NODES` nodes, and recursive aliases: a "billion laughs" document is a few
  hundred bytes that expand to gigabytes once validated or printed. hwsbs's own files use no
  aliases at all; the limits leave room for a hand-written profile that reuses a block or two;
- integers longer than :data:`MAX_INT_CHARS` characters (no count or size needs more; Python's
  big-integer arithmetic on a megabyte of digits would take minutes).

Files are read through :func:`hardware_profiles.checked_io.read_checked_text`: regular files of at most
:data:`hardware_profiles.checked_io.TEXT_LIMIT` bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from hardware_profiles.checked_io import TEXT_LIMIT, read_checked_text
from hardware_profiles.errors import ConfigError, HwsbsError

__all__ = ["MAX_DEPTH", "MAX_ALIASES", "MAX_ALIAS_NODES", "MAX_INT_CHARS", "load_yaml", "load_yaml_text", "dump_yaml"]

#: Deepest nesting of lists and mappings (hwsbs's files need 5).
MAX_DEPTH = 64
#: Most aliases (``*name``) in one document.
MAX_ALIASES = 100
#: Most nodes all aliases of one document may stand for together (each use counts in full).
MAX_ALIAS_NODES = 10_000
#: Longest integer literal, in characters (signs and ``_`` included).
MAX_INT_CHARS = 40


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """SafeLoader with the limits of this module (duplicate keys, depth, aliases, integers)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._alias_nodes = 0
        self._open_anchors: set[str] = set()
        self._extent: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth), aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose one node, enforcing the depth and alias limits."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return self._compose_alias(parent, index, event)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def _compose_alias(self, parent: yaml.Node | None, index: Any, event: yaml.AliasEvent) -> yaml.Node:
        if event.anchor in self._open_anchors:
            raise ComposerError(
                None, None, f"alias *{event.anchor} is used inside the node it names (recursive)", event.start_mark
            )
        node = super().compose_node(parent, index)  # consumes the event; undefined aliases fail here
        nodes, depth = self._node_extent(node)
        self._aliases += 1
        self._alias_nodes += nodes
        if self._aliases > MAX_ALIASES:
            raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases", event.start_mark)
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise ComposerError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes", event.start_mark)
        if self._depth + depth > MAX_DEPTH:
            raise ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels (through alias *{event.anchor})", event.start_mark
            )
        return node

    def _node_extent(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes, depth) of ``node`` with every alias inside it expanded (memoised)."""
        known = self._extent.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.ScalarNode):
            children: list[yaml.Node] = []
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = [part for pair in node.value for part in pair]
        extents = [self._node_extent(child) for child in children]
        result = (1 + sum(n for n, _ in extents), 1 + max((d for _, d in extents), default=0))
        self._extent[id(node)] = result
        return result

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct a node; a value its tag cannot hold (``2001-13-45``) is a YAML error at its line."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, AttributeError, OverflowError, IndexError) as exc:
            shown = str(node.value)[:40] if isinstance(node, yaml.ScalarNode) else node.id
            raise ConstructorError(
                None, None, f"{shown!r} is not a valid {node.tag.rsplit(':', 1)[-1]} ({exc})", node.start_mark
            ) from None


def _construct_unique_mapping(loader: _UniqueKeySafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConstructorError(
                None, None, f"a mapping key must be a plain value, not a {key_node.id}", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


def _construct_bounded_int(loader: _UniqueKeySafeLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    if len(text) > MAX_INT_CHARS:
        raise ConstructorError(
            None, None, f"integer of {len(text)} characters (at most {MAX_INT_CHARS})", node.start_mark
        )
    return loader.construct_yaml_int(node)


_UniqueKeySafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
_UniqueKeySafeLoader.add_constructor("tag:yaml.org,2002:int", _construct_bounded_int)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return " ".join(str(problem).split())


def load_yaml_text(text: str, source: str = "<string>") -> Any:
    """Parse YAML text safely; raise :class:`ConfigError` naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where}: invalid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except (
        ValueError,
        TypeError,
        AttributeError,
        OverflowError,
        IndexError,
    ) as exc:  # a constructor PyYAML did not guard
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())[:200]}") from None


def load_yaml(
    path: str | Path, *, what: str = "file", limit: int = TEXT_LIMIT, error: type[HwsbsError] = ConfigError
) -> Any:
    """Read (a regular file of at most ``limit`` bytes) and parse a YAML file safely.

    Args:
        path: the file.
        what: how messages call the file when it cannot be read ("file", "lookup table file").
        limit: the largest file accepted, in bytes.
        error: the exception class for an unreadable file (parse errors are ConfigError).

    Raises:
        ConfigError: ``FILE: file not found``, ``FILE: ... not a regular file``, ``FILE: line N:
            invalid YAML: ...`` (``error`` for the reading problems).
    """
    p = Path(path)
    text = read_checked_text(p, what, limit, error)
    return load_yaml_text(text, str(p))


def dump_yaml(data: Any, path: str | Path) -> None:
    """Write ``data`` as block-style YAML atomically (write a sibling, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None), encoding="utf-8")
    tmp.replace(p)
