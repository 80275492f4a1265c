"""CSS inlined once per template shape, not once per message (the send task's emails).

css_inline parses a rendered email (its HTML and its <style>), matches every rule and writes the
declarations into style="" attributes: about a millisecond per message. The messages of one
template differ only in the values their `{{ }}` expressions print (names, links, prices) and
in which branches and loops ran (a coupon or none, two cart items or three): their *shape*. So
the HTML template is rendered with each printed value replaced by a numbered slot (U+E000 n
U+E001), giving a skeleton; the first time a skeleton is seen it is inlined once and kept as
the static pieces between its slots; each message is then those pieces joined with its values,
escaped as css_inline's serialiser (html5ever) writes them. The result is the same string as
inlining the message itself (tests/test_render.py renders every shipped template both ways).

That holds when a printed value can change neither which CSS rules match nor how the HTML
parser places it. Checked, and otherwise the message is inlined as before:

- per template, over everything it extends, includes and imports (`template_problem`): names
  are literal; every file is autoescaped; no {% filter %}, block {% set %} or {% autoescape %};
  a macro, caller(), super() or block is only called to be printed, so no slot ends up inside a
  value the template inspects ({% if ui.button(...) %}) or transforms (|trim);
- per shape, when a skeleton is first inlined (`_pieces`): the stylesheet has no attribute
  selector and no pseudo-class that reads text or attribute values (:empty, :lang()); no <link>;
  the parser keeps every slot, once, in order, with the same start tags before it (nothing
  moved, as text is moved out of a table); a slot in text sits in an ordinary element (p, td, a,
  span, title: not body, a table row, pre, textarea, select, style or script); a slot in an
  attribute is in a quoted value of anything but class, id and style; no "&" or "<" of the
  static text runs into a slot (a value could complete a character reference or a tag);
- per message (`inline`): no value holds a carriage return, a NUL or a lone surrogate (the
  parser rewrites those).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import css_inline
import jinja2
from jinja2 import meta, nodes
from markupsafe import Markup

log = logging.getLogger(__name__)
_SLOT = re.compile("\ue000(\\d+)\ue001")
_values: ContextVar[list[str] | None] = ContextVar("lifecycle_inlining_values", default=None)

MAX_SHAPES = 64  # distinct skeletons kept per template; past that, its messages are inlined one by one


@jinja2.pass_eval_context
def slot_finalize(eval_ctx, value):
    """The `finalize` of the environment that renders skeletons: while a skeleton is being
    rendered, each printed value (not markup: a macro's output keeps its own slots) is recorded
    and a slot printed instead. A pass_eval_context finalize is never applied at compile time."""
    values = _values.get()
    if values is None or hasattr(value, "__html__"):
        return value
    values.append(str(value))
    return Markup(f"\ue000{len(values) - 1}\ue001")


# --------------------------------------------------------------------------- per template
_SAFE_GLOBALS = {"range", "dict", "lipsum", "cycler", "joiner", "namespace"}
_MARKUP_NAMES = {"self", "caller", "super", "varargs", "kwargs", "loop"}


def template_problem(env: jinja2.Environment, name: str) -> str | None:
    """Why the skeletons of template `name` (and what it extends, includes, imports) might
    not stand for its messages; None when they do."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if not (env.autoescape(current) if callable(env.autoescape) else env.autoescape):
            return f"{current} is not autoescaped"
        source, _, _ = env.loader.get_source(env, current)  # type: ignore[union-attr]
        tree = env.parse(source, current)
        problem = _tree_problem(tree)
        if problem:
            return f"{current}: {problem}"
        referenced = list(meta.find_referenced_templates(tree))
        if None in referenced:
            return f"{current}: a template name computed while rendering"
        todo += referenced
    return None


def _tree_problem(tree: nodes.Template) -> str | None:
    for node in tree.find_all((nodes.FilterBlock, nodes.AssignBlock, nodes.EvalContextModifier)):
        return {nodes.FilterBlock: "a {% filter %} block", nodes.AssignBlock: "a block {% set %}"}.get(
            type(node), "an {% autoescape %} block")
    printed = {id(child) for output in tree.find_all(nodes.Output) for child in output.nodes}
    printed |= {id(block.call) for block in tree.find_all(nodes.CallBlock)}
    markup = _markup_names(tree)
    for call in tree.find_all(nodes.Call):
        if id(call) not in printed and not _calls_data(call.node, markup):
            return f"line {call.lineno}: the result of a call is used, not printed"
    return None


def _calls_data(callee: nodes.Expr, markup: set[str]) -> bool:
    """Whether a call cannot return markup with slots: range() and its like, or a method of the
    data (row.get(...))."""
    if isinstance(callee, nodes.Name):
        return callee.name in _SAFE_GLOBALS and callee.name not in markup
    while isinstance(callee, (nodes.Getattr, nodes.Getitem)):
        callee = callee.node
    return isinstance(callee, nodes.Name) and callee.name not in markup


def _markup_names(tree: nodes.Template) -> set[str]:
    """Names that may hold markup with slots, or something returning it: macros and imports,
    their parameters, and whatever is assigned or iterated from such names."""
    names = set(_MARKUP_NAMES)
    for node in tree.find_all((nodes.Macro, nodes.CallBlock, nodes.Import, nodes.FromImport)):
        if isinstance(node, (nodes.Macro, nodes.CallBlock)):
            names |= {getattr(node, "name", "caller")} | {arg.name for arg in node.args}
        elif isinstance(node, nodes.Import):
            names.add(node.target)
        else:
            names |= {alias if isinstance(alias, str) else alias[-1] for alias in node.names}
    while True:  # until nothing more is reached
        before = len(names)
        for node in tree.find_all((nodes.Assign, nodes.For, nodes.With)):
            pairs = ([(node.target, node.node)] if isinstance(node, nodes.Assign)
                     else [(node.target, node.iter)] if isinstance(node, nodes.For)
                     else list(zip(node.targets, node.values, strict=True)))
            for target, value in pairs:
                if {n.name for n in value.find_all(nodes.Name)} & names or (
                        isinstance(value, nodes.Name) and value.name in names):
                    names |= {n.name for n in [target, *target.find_all(nodes.Name)] if isinstance(n, nodes.Name)}
        if len(names) == before:
            return names


# --------------------------------------------------------------------------- per shape
@dataclass(frozen=True)
class _Pieces:
    """An inlined skeleton: the static text around its slots, and for each slot (in document
    order) the id of its value and whether it sits in an attribute."""

    statics: tuple[str, ...]
    ids: tuple[int, ...]
    in_attribute: tuple[bool, ...]

    def join(self, values: list[str]) -> str:
        parts = [self.statics[0]]
        for static, i, in_attribute in zip(self.statics[1:], self.ids, self.in_attribute, strict=True):
            parts.append(_attribute_value(values[i]) if in_attribute else _text(values[i]))
            parts.append(static)
        return "".join(parts)


_TEXT_SPECIAL = re.compile("[&<>\xa0]")
_ATTRIBUTE_SPECIAL = re.compile('[&"\xa0]')
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\xa0": "&nbsp;"})
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", '"': "&quot;", "\xa0": "&nbsp;"})


def _text(value: str) -> str:
    """A value in text as html5ever serialises it (quotes as they are)."""
    return value.translate(_TEXT_ESCAPES) if _TEXT_SPECIAL.search(value) else value


def _attribute_value(value: str) -> str:
    """A value in a double-quoted attribute as html5ever serialises it (< and > as they are)."""
    return value.translate(_ATTRIBUTE_ESCAPES) if _ATTRIBUTE_SPECIAL.search(value) else value


class _Unsafe(Exception):
    """This skeleton's inlined form would not stand for its messages."""


def render_skeleton(template: jinja2.Template, context: dict) -> tuple[str, list[str]]:
    """`template` (from an environment whose finalize is slot_finalize) rendered with a slot
    for each printed value; (skeleton, the values)."""
    values: list[str] = []
    token = _values.set(values)
    try:
        return template.render(context), values
    finally:
        _values.reset(token)


_UNSAFE_VALUE = re.compile("[\r\0\ud800-\udfff]")


# How each message's CSS was inlined in this process: 'new shape', 'known shape', 'per message'.
counts: Counter[str] = Counter()


def inline(shapes: dict[str, _Pieces | None], skeleton: str, values: list[str],
           inline_message: Callable[[], str]) -> str:
    """The message's HTML with its CSS inlined: its shape's pieces joined with its values, the
    shape inlined now if it is new (kept in `shapes`, the template's); `inline_message()`
    (css_inline on the message itself) when that would not give the same string."""
    known = skeleton in shapes
    if not known and len(shapes) < MAX_SHAPES:
        try:
            shapes[skeleton] = _pieces(skeleton, len(values))
        except (_Unsafe, css_inline.InlineError) as exc:
            log.debug("CSS inlined per message for this shape: %s", exc)
            shapes[skeleton] = None
    pieces = shapes.get(skeleton)
    if pieces is None or _UNSAFE_VALUE.search("".join(values)):
        counts["per message"] += 1
        return inline_message()
    counts["known shape" if known else "new shape"] += 1
    return pieces.join(values)


def _pieces(skeleton: str, count: int) -> _Pieces:
    """Inline a skeleton once and check that its slots stand for any values (see the module's
    docstring); raises _Unsafe."""
    template = _scan(skeleton)
    if template.link or template.frameset:
        raise _Unsafe("a <link> or <frameset>")
    _check_stylesheet("\n".join(template.styles))
    inlined = inliner().inline(skeleton)
    parsed = _scan(inlined)
    if template.events != parsed.events or sorted(slot.id for slot in parsed.slots) != list(range(count)):
        raise _Unsafe("the parser moved, dropped or doubled a slot")
    for before, after in zip(template.slots, parsed.slots, strict=True):
        _check_slot(before, after)
    return _Pieces(tuple(_SLOT.split(inlined)[::2]), tuple(slot.id for slot in parsed.slots),
                   tuple(slot.kind == "attribute" for slot in parsed.slots))


_TEXT_PARENTS = {"a", "abbr", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote", "caption",
                 "center", "cite", "code", "dd", "del", "details", "dfn", "div", "dt", "em", "figcaption", "figure",
                 "font", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "i", "ins", "kbd", "label",
                 "legend", "li", "main", "mark", "nav", "p", "q", "s", "samp", "section", "small", "span", "strike",
                 "strong", "sub", "summary", "sup", "td", "th", "time", "title", "tt", "u", "var"}
_FOREIGN = {"svg", "math", "template", "select", "noscript"}
_STYLED_ATTRIBUTES = {"class", "id", "style"}


def _check_slot(before: _Slot, after: _Slot) -> None:
    """A slot as the template wrote it (`before`) and as the parser and inliner left it."""
    if before.kind != after.kind or (before.element, before.attribute) != (after.element, after.attribute):
        raise _Unsafe(f"slot {after.id}: {before} in the template, {after} once parsed")
    if before.run_on:
        raise _Unsafe(f"slot {after.id} follows a '&' or '<' it could complete")
    if after.kind == "attribute":
        if after.attribute in _STYLED_ATTRIBUTES or after.element in ("link", "style", "base") or not before.quote:
            raise _Unsafe(f"slot {after.id} in {after.element} {after.attribute}= ({before.quote or 'unquoted'})")
    elif after.kind != "text" or not after.stack or after.stack[-1] not in _TEXT_PARENTS \
            or _FOREIGN & set(after.stack):
        raise _Unsafe(f"slot {after.id} in {after.kind} of <{'/'.join(after.stack)}>")


# Pseudo-classes whose match depends on the document's structure only, not on text or values.
_STRUCTURAL = {"first-child", "last-child", "only-child", "nth-child", "nth-last-child", "first-of-type",
               "last-of-type", "only-of-type", "nth-of-type", "nth-last-of-type", "root", "not", "is", "where",
               "has", "link", "visited", "any-link", "hover", "active", "focus", "focus-within", "focus-visible",
               "before", "after", "first-line", "first-letter", "selection", "marker", "placeholder"}
_PRELUDE = re.compile(r"([^{}]*)\{")
_PSEUDO = re.compile(r"::?([A-Za-z-]+)")


def _check_stylesheet(css: str) -> None:
    """Raises _Unsafe for a selector that could match on what a slot holds."""
    for prelude in _PRELUDE.findall(re.sub(r"/\*.*?\*/", "", css, flags=re.S)):
        selector = prelude.strip()
        if selector.startswith("@"):
            continue
        if "[" in selector:
            raise _Unsafe(f"an attribute selector: {selector}")
        unknown = {p.lower() for p in _PSEUDO.findall(selector)} - _STRUCTURAL
        if unknown:
            raise _Unsafe(f"pseudo-classes {sorted(unknown)} in {selector}")


# --------------------------------------------------------------------------- a small HTML scanner
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
         "param", "keygen", "basefont", "bgsound", "frame"}
_RAW = {"style", "script", "xmp", "iframe", "noembed", "noframes", "noscript", "title", "textarea", "plaintext"}
# Start tags left out of the comparison: those the parser adds by itself, and <style>, which the
# inliner removes or moves (keep_at_rules: the @media rules in a <style> of their own).
_NOT_COMPARED = {"html", "head", "body", "tbody", "colgroup", "style"}
_TAG_NAME = re.compile(r"<(/?)([A-Za-z][^\t\n\f\r />]*)")
_ATTRIBUTE = re.compile(r"""[\t\n\f\r /]*(?:(>)|([^\t\n\f\r />][^\t\n\f\r />=]*)"""
                        r"""(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"([^"]*)"|'([^']*)'|([^\t\n\f\r >]*)))?)""")
_RUN_ON_TEXT = re.compile(r"(?:&[A-Za-z0-9#]*|</?)$")  # a reference or a tag a value could complete
_RUN_ON_ATTRIBUTE = re.compile(r"&[A-Za-z0-9#]*$")


@dataclass(frozen=True)
class _Slot:
    id: int
    kind: str  # text, attribute, or where else it was found (comment, tag name, <style>, ...)
    element: str = ""  # the attribute's element
    attribute: str = ""
    quote: str = ""  # the attribute value's quote in the template ('"', "'", or none)
    run_on: bool = False  # static text right before it could run into the value ("&amp", "<")
    stack: tuple[str, ...] = ()  # the open elements around a slot in text


@dataclass
class _Scan:
    events: list = field(default_factory=list)  # start tag names (but _NOT_COMPARED) and slot ids, in order
    slots: list[_Slot] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    link: bool = False
    frameset: bool = False


def _scan(html: str) -> _Scan:
    """Tags, slots and style sheets of `html`, read as an HTML tokeniser reads it. The tree
    builder's corrections (implied, moved or dropped elements) are what comparing the template's
    scan with the inlined output's finds."""
    scan, stack = _Scan(), []
    pos = 0
    while pos < len(html):
        lt = html.find("<", pos)
        stop = len(html) if lt < 0 else lt
        _slots_in(html, pos, stop, scan, "text", stack=tuple(stack), pattern=_RUN_ON_TEXT)
        if lt < 0:
            break
        pos = _markup(html, lt, scan, stack)
    return scan


def _slots_in(html: str, start: int, stop: int, scan: _Scan, kind: str, pattern: re.Pattern | None = None,
              **where) -> None:
    for match in _SLOT.finditer(html, start, stop):
        run_on = bool(pattern and pattern.search(html[max(0, match.start() - 32):match.start()]))
        scan.events.append(("slot", int(match.group(1))))
        scan.slots.append(_Slot(int(match.group(1)), kind, run_on=run_on, **where))


def _markup(html: str, lt: int, scan: _Scan, stack: list[str]) -> int:
    """Read the markup starting at html[lt] ('<'); the position after it."""
    if html.startswith("<!--", lt):
        short = 5 if html.startswith("<!-->", lt) else 6 if html.startswith("<!--->", lt) else 0
        close = html.find("-->", lt + 4)
        stop = lt + short if short else len(html) if close < 0 else close + 3
        _slots_in(html, lt, stop, scan, "comment")
        return stop
    tag = _TAG_NAME.match(html, lt)
    if tag is None:
        if not html.startswith(("<!", "<?", "</"), lt):
            return lt + 1  # a "<" that starts nothing: text (its slots are read with the text)
        close = html.find(">", lt)  # a doctype, a bogus comment, "</>"
        stop = len(html) if close < 0 else close + 1
        _slots_in(html, lt, stop, scan, "comment")
        return stop
    _slots_in(html, lt, tag.end(), scan, "tag name")
    closing, name = tag.group(1) == "/", tag.group(2).lower()
    pos, attributes = tag.end(), []
    while True:
        attribute = _ATTRIBUTE.match(html, pos)
        if attribute is None:
            raise _Unsafe("a tag left open at the end")
        pos = attribute.end()
        if attribute.group(1):
            break
        attributes.append(attribute)
    if closing:
        _slots_in(html, tag.end(), pos, scan, "end tag")
        if name in stack:
            del stack[len(stack) - 1 - stack[::-1].index(name):]
        return pos
    if name not in _NOT_COMPARED:
        scan.events.append(("tag", name))
    scan.link |= name == "link"
    scan.frameset |= name == "frameset"
    for attribute in attributes:
        _slots_in(html, attribute.start(2), attribute.end(2), scan, "attribute name")
        for group, quote in ((3, '"'), (4, "'"), (5, "")):
            if attribute.group(group) is not None:
                _slots_in(html, attribute.start(group), attribute.end(group), scan, "attribute",
                          pattern=_RUN_ON_ATTRIBUTE, element=name, attribute=attribute.group(2).lower(), quote=quote)
    if name in _RAW:
        return _raw_text(html, pos, name, scan, stack)
    if name not in _VOID:
        stack.append(name)  # "<div/>" opens a div all the same: HTML ignores the slash
    return pos


def _raw_text(html: str, pos: int, name: str, scan: _Scan, stack: list[str]) -> int:
    """Read the content of a raw text element (a <style>'s sheet is kept; a <title>'s is text);
    the position after its end tag."""
    close = re.compile(f"</{name}[\\t\\n\\f\\r />]", re.I).search(html, pos) if name != "plaintext" else None
    stop = len(html) if close is None else close.start()
    if name == "style":
        scan.styles.append(html[pos:stop])
    if name == "title":
        _slots_in(html, pos, stop, scan, "text", stack=(*stack, "title"), pattern=_RUN_ON_TEXT)
    else:
        _slots_in(html, pos, stop, scan, f"<{name}>")
    if close is None:
        return len(html)
    end = html.find(">", close.end() - 1)
    return len(html) if end < 0 else end + 1


@functools.cache
def inliner() -> css_inline.CSSInliner:
    # keep_at_rules: @media queries (mobile layout) cannot be inlined; they stay in a
    # <style> tag, everything else moves into style="" attributes.
    return css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
