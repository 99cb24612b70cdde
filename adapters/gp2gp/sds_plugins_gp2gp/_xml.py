"""Write an ElementTree as HL7 V3 messages are written: HL7's namespace as the default one.

``ElementTree.tostring(default_namespace=...)`` refuses unqualified attribute names (every HL7
attribute is one), and registering the empty prefix would change every other document the
process writes. This writer declares the default namespace (and a prefix for each other one)
on the root, and escapes every text and attribute value with :mod:`xml.sax.saxutils`.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

__all__ = ["to_text"]

_XML_NS = "http://www.w3.org/XML/1998/namespace"


def _split(name: str) -> tuple[str | None, str]:
    if name.startswith("{"):
        uri, _, local = name[1:].partition("}")
        return uri, local
    return None, name


def _is_element(element: ElementTree.Element) -> bool:
    # Comments and processing instructions have a function for a tag (typeshed says str).
    tag: object = element.tag
    return isinstance(tag, str)


def to_text(root: ElementTree.Element, default_namespace: str, prefixes: Mapping[str, str]) -> str:
    """``root`` as an XML document (UTF-8 declaration), ``default_namespace`` unprefixed, the
    other namespaces with ``prefixes`` (``ns0``, ``ns1``... for those it does not name)."""
    chosen: dict[str, str] = {_XML_NS: "xml"}
    for element in root.iter():
        if not _is_element(element):
            continue
        names = [element.tag, *element.keys()]
        for name in names:
            uri, _ = _split(name)
            if uri is not None and uri != default_namespace and uri not in chosen:
                chosen[uri] = prefixes.get(uri) or f"ns{len(chosen) - 1}"
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>']

    def qualified(name: str, attribute: bool) -> str:
        uri, local = _split(name)
        if uri is None or (uri == default_namespace and not attribute):
            return local
        return f"{chosen[uri]}:{local}"

    def write(element: ElementTree.Element, default: str | None, top: bool) -> None:
        if not _is_element(element):  # a comment or processing instruction: dropped
            if element.tail:
                out.append(escape(element.tail))
            return
        uri, _ = _split(element.tag)
        attributes = []
        inner_default = default
        if top:
            attributes += [f"xmlns:{p}={quoteattr(u)}" for u, p in chosen.items() if u != _XML_NS]
        if uri is None and inner_default is not None:
            # An unqualified element inside the default namespace: undeclare it.
            attributes.append('xmlns=""')
            inner_default = None
        elif uri == default_namespace and inner_default is None:
            attributes.append(f"xmlns={quoteattr(default_namespace)}")
            inner_default = default_namespace
        attributes += [
            f"{qualified(key, True)}={quoteattr(value)}" for key, value in element.items()
        ]
        tag = qualified(element.tag, False)
        out.append(f"<{' '.join([tag, *attributes])}")
        children = list(element)
        if not children and not element.text:
            out.append("/>")
        else:
            out.append(">")
            if element.text:
                out.append(escape(element.text))
            for child in children:
                write(child, inner_default, False)
            out.append(f"</{tag}>")
        if element.tail and not top:
            out.append(escape(element.tail))

    write(root, None, True)
    return "".join(out)
