"""The one YAML reader of the toolkit, and short reprs of values for error lines.

``load_yaml_text`` is ``yaml.safe_load`` that refuses a key written twice and an alias bomb
(a 'billion laughs' file) while the file is composed, before anything walks it: training.yaml,
dataset.yaml and an import source's data.yaml all go through it.
"""
from __future__ import annotations

import reprlib
from typing import Any

import yaml

MAX_YAML_VALUES = 100_000  # a data.yaml of 1 000 classes is ~2 000; a 600-byte alias bomb, 9**9


class YamlTooLarge(yaml.YAMLError):
    """A YAML text whose aliases expand beyond ``MAX_YAML_VALUES`` values (a 'billion laughs' file)."""

    def __init__(self, where: str, mark: Any = None):
        self.problem = (f"{where} expands to more than {MAX_YAML_VALUES:,} values through its aliases (*name); "
                        "write the values out")
        self.problem_mark = mark
        super().__init__(self.problem)


MAX_YAML_DEPTH = 64  # nesting of lists / mappings: a settings file needs 4; 50,000 would end in a RecursionError


class YamlTooDeep(yaml.YAMLError):
    """A YAML text nested deeper than ``MAX_YAML_DEPTH`` (50,000 '[' end in Python's recursion limit)."""

    def __init__(self, mark: Any = None):
        self.problem = f"nests lists or mappings more than {MAX_YAML_DEPTH} deep; no setting needs that"
        self.problem_mark = mark
        super().__init__(self.problem)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML would keep the last), and a
    text whose aliases expand beyond ``MAX_YAML_VALUES`` values: each node's expanded size is
    counted as it is composed (an alias counts the whole node it names), before anything walks it.
    """

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._keys: list[str] = []
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        key = index.value if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode) else None
        if key is not None:
            self._keys.append(str(key)[:40])
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YamlTooDeep(self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if key is not None:
                self._keys.pop()
        if id(node) not in self._sizes:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
            else:
                size = 1
            if size > MAX_YAML_VALUES:
                where = f"'{'.'.join(self._keys + ([key] if key else []))}'" if self._keys or key else "the file"
                raise YamlTooLarge(where, node.start_mark)
            self._sizes[id(node)] = size
        return node


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short(key)} is written twice (first on line {seen[key] + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: the constructor below reports it
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys and alias bombs (``YamlTooLarge``).

    The one YAML reader of the toolkit: training.yaml, dataset.yaml, an import source's data.yaml.
    """
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


class _MaskedRepr(reprlib.Repr):
    def repr_str(self, x: str, level: int) -> str:   # a URL's password masked before the text is cut
        from toolkit.core.redact import mask_url

        return super().repr_str(mask_url(x), level)


_REPR = _MaskedRepr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def short(value: Any, limit: int = 200) -> str:
    """A repr of ``value`` of at most ``limit`` characters, computed without expanding it whole
    (a YAML 'billion laughs' value must not become an 80 MB error line)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
