"""Plain text from troff/man(7)/mdoc(7) source, in Python (rendering through ``man`` takes ~14 min for the corpus).

Not a troff interpreter: it keeps the words a reader sees and drops layout.  Requests and macros that only
lay out text (``.PP``, ``.RS``, ``.sp``, ``.in`` ...) become paragraph or line breaks; macros that carry text
(``.SH``, ``.B``, ``.BR``, ``.IP tag``, mdoc ``.Nm``/``.Fl``/``.Xr`` ...) keep their arguments; ``.TH``/``.Dt``
(which name the page's section) are dropped so the text does not carry the ``man_section`` label; macro
definitions (``.de`` ... ``..``), ignored blocks (``.ig``), comments and index entries (``.IX``) vanish;
conditionals are evaluated as nroff would (``n`` true, ``t`` false, string comparisons honoured, anything
numeric false); ``.ds`` strings are defined and ``\\*(xx`` interpolates them.

Bounded on any input (the page source is user data when ``corpus.man_root`` points at someone else's files): time
is linear in the source and the text is at most a few times its length.  An escape's argument is at most
``MAX_ARG`` characters (an unclosed ``\\[`` or ``\\w'`` does not scan the rest of its line again for every
backslash), a string holds at most ``MAX_STRING`` characters, conditionals nest at most ``MAX_NESTING`` deep on
one line, and a page may add at most ``2 * len(source)`` characters by interpolation (``\\*`` strings, a bare
mdoc ``.Nm``; ``Budget``): past that an interpolation gives nothing, so string doubling stops growing.
"""

from __future__ import annotations

import re
import unicodedata

MAX_ARG = 256
"""Longest argument of an escape (``\\[name]``, ``\\w'...'``, ``\\f[...]`` ...; the longest on the 21k pages of
/usr/share/man: 105): a longer one is not an escape, and no escape looks further."""
MAX_STRING = 1024
"""Longest ``.ds``/``.as`` string (the longest on /usr/share/man: 199 characters); longer ones are cut."""
MAX_NESTING = 16
"""Conditionals nested on one line (``.if n .if n ...``; on /usr/share/man: 2) beyond this drop the line."""

# \(xx and \[name] glyphs (groff_char(7)); unknown names render as nothing.
GLYPHS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "pl": "+", "eq": "=", "bu": "\u2022", "aq": "'",
    "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "Fo": "\u00ab", "Fc": "\u00bb",
    "fo": "\u2039", "fc": "\u203a", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", ">=": "\u2265",
    "<=": "\u2264", "!=": "\u2260", "==": "\u2261", "mu": "\u00d7", "di": "\u00f7", "->": "\u2192",
    "<-": "\u2190", "<>": "\u2194", "de": "\u00b0", "ga": "`", "aa": "\u00b4", "ti": "~", "ha": "^",
    "rs": "\\", "sl": "/", "ba": "|", "or": "|", "br": "|", "ul": "_", "ru": "_", "sc": "\u00a7",
    "ps": "\u00b6", "dg": "\u2020", "ss": "\u00df", "ae": "\u00e6", "AE": "\u00c6", "oe": "\u0153",
    "OE": "\u0152", "o/": "\u00f8", "O/": "\u00d8", "oa": "\u00e5", "oA": "\u00c5", "+-": "\u00b1",
    "12": "\u00bd", "14": "\u00bc", "34": "\u00be", "ct": "\u00a2", "Po": "\u00a3", "Eu": "\u20ac",
    "Ye": "\u00a5", "at": "@", "sh": "#", "Do": "$", "lB": "[", "rB": "]", "lC": "{", "rC": "}",
    "la": "\u27e8", "ra": "\u27e9", "sq": "\u25a1", "ci": "\u25cb", "**": "*", "pc": "\u00b7", "md": "\u00b7",
    "r!": "\u00a1", "r?": "\u00bf", "bq": "\u201e", "Bq": "\u201e", "an": "-", "a-": "\u00af",
    "em-dash": "\u2014", "en-dash": "\u2013", "shc": "-", "dash": "-", "nbsp": " ", "lh": "\u261c",
    "rh": "\u261e", "OK": "\u2713", "ua": "\u2191", "da": "\u2193", "if": "\u221e", "ap": "~", "ss2": "\u00df",
}
# \(:a, \('e, \[`e] ...: accent + base letter -> the composed character.
ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303", ",": "\u0327",
           "v": "\u030c", "o": "\u030a", "u": "\u0306", ".": "\u0307", "-": "\u0304", '"': "\u030b"}
# Predefined strings (man(7), pod2man, groff tmac) for \*(xx when a page does not define them.
STRINGS = {"R": "\u00ae", "Tm": "\u2122", "lq": "\u201c", "rq": "\u201d", "C`": '"', "C'": '"',
           "L\"": "\u201c", "R\"": "\u201d", "S": "", "Aq": "'", "PI": "\u03c0", "--": "-", "`": "`", "'": "'"}
# Single-character escapes; any other \x renders as x.
SIMPLE = {"-": "-", "e": "\\", "\\": "\\", "E": "\\", "&": "", "|": "", "^": "", "0": " ", " ": " ", "~": " ",
          "c": "", ":": "", "%": "", "/": "", ",": "", "u": "", "d": "", "r": "", "t": "\t", "a": "",
          "{": "", "}": "", "'": "'", "`": "`", ".": ".", "p": "", "!": "", "?": "", "z": "", "j": "",
          "\n": "", ")": "", "\t": "\t"}

_ESC = re.compile(
    r"""\\(?:
      f(?:\[[^\]\n]{0,ARG}\]|\(..|.)              # font change
    | s(?:[+-]?\(\d\d|\([+-]?\d\d|\[[^\]\n]{0,ARG}\]|'[^'\n]{0,ARG}'|[+-]?\d)  # size change
    | \((?P<g2>..)                          # \(xx glyph
    | \[(?P<gb>[^\]\n]{0,ARG})\]                  # \[name] glyph
    | \*(?:\((?P<s2>..)|\[(?P<sb>[^\]\n]{0,ARG})\]|(?P<s1>.))  # string interpolation
    | [nkgFmMVY](?:[+-]?\(..|[+-]?\[[^\]\n]{0,ARG}\]|[+-]?.)  # registers, marks, fonts families, colours
    | (?P<qn>[NC])(?P<qd>.)(?P<qa>.{0,ARG}?)(?P=qd)  # \N'123', \C'name'
    | [hvwoLlDXZbxRSHAB](?P<d>.).{0,ARG}?(?P=d)     # drawing/motion/width/etc. with delimited argument
    | \$(?:\*|@|\d|\(\d\d|\[[^\]\n]{0,ARG}\])       # macro arguments (outside a definition: nothing)
    | "\S*.*$                                  # comment to end of line (consumed: no rescan)
    | \#.*$
    | (?P<c>.)
    )""".replace("ARG", str(MAX_ARG)),
    re.X | re.M,
)


class Budget:
    """What a page may still add by interpolation (``room`` characters) and the work done on it so far
    (``work``: characters handed to each line, render and string definition: linear in the source)."""

    def __init__(self, room: int):
        self.room = room
        self.work = 0

    def take(self, value: str) -> str:
        """``value``, cut to the room left (nothing once it is used up)."""
        value = value[:max(self.room, 0)]
        self.room -= len(value)
        return value


def _glyph(name: str) -> str:
    if name in GLYPHS:
        return GLYPHS[name]
    if name.startswith("u") and len(name) >= 5:  # \[u00E9], \[u0065_0301]
        try:
            return unicodedata.normalize("NFC", "".join(chr(int(h, 16)) for h in name[1:].split("_")))
        except ValueError:
            return ""
    if len(name) == 2 and name[0] in ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + ACCENTS[name[0]])
    if len(name) == 2 and name[1] in ACCENTS and name[0].isalpha():  # \(a' style is rare but exists
        return unicodedata.normalize("NFC", name[0] + ACCENTS[name[1]])
    if name.startswith("char") and name[4:].isdigit():
        return chr(int(name[4:]))
    return ""


def render_escapes(s: str, strings: dict[str, str], budget: Budget | None = None) -> str:
    """Escapes of ``s`` rendered; interpolated strings are charged to ``budget`` (none: unbounded)."""
    if budget is not None:
        budget.work += len(s)

    def sub(m: re.Match) -> str:
        if m.group("g2") is not None:
            return _glyph(m.group("g2"))
        if m.group("gb") is not None:
            return _glyph(m.group("gb"))
        for k in ("s2", "sb", "s1"):
            if m.group(k) is not None:
                value = strings.get(m.group(k), STRINGS.get(m.group(k), ""))
                return budget.take(value) if budget is not None else value
        if m.group("qn") is not None:
            arg = m.group("qa")
            if m.group("qn") == "N":
                return chr(int(arg)) if arg.isdigit() and 31 < int(arg) < 0x110000 else ""
            return _glyph(arg)
        c = m.group("c")
        if c is not None:
            return SIMPLE.get(c, c)
        return ""

    # .ds values are stored rendered, so one pass suffices (a second would re-read a rendered "\\e")
    return _ESC.sub(sub, s)


def _split_args(s: str) -> list[str]:
    """Macro arguments: blank-separated, double quotes group, "" inside quotes is a quote."""
    args, i, n = [], 0, len(s)
    while i < n:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            break
        if s[i] == '"':
            i += 1
            buf = []
            while i < n:
                if s[i] == '"':
                    if i + 1 < n and s[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                if s[i] == "\\" and i + 1 < n:  # keep escapes whole (\" inside quotes is not an end)
                    buf.append(s[i:i + 2])
                    i += 2
                    continue
                buf.append(s[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and s[j] not in " \t":
                j += 2 if s[j] == "\\" else 1
            args.append(s[i:j])
            i = j
    return args


NOFILL_ON = {"nf", "EX", "Vb", "Bd"}
NOFILL_OFF = {"fi", "EE", "Ve", "Ed"}
HEADINGS = {"SH", "SS", "Sh", "Ss"}
JOINED = {"BR", "RB", "BI", "IB", "IR", "RI"}  # alternating fonts: arguments without spaces
SPACED = {"B", "I", "SM", "SB", "Nm", "Nd", "Ar", "Ic", "Ql", "Em", "Pa", "Ev", "Dv", "Er", "Va", "Cm",
          "Sy", "Li", "Ad", "An", "Ms", "Lk", "Mt", "Tn", "St", "Dq", "Qq", "Sq", "Pq", "Aq", "Bq", "Brq",
          "Op", "D1", "Dl", "Ft", "Fd", "Fa", "Fn", "Fo", "Vt", "Sx", "Ot", "Ux", "Bx", "Nx", "Fx", "Ox", "Bsx",
          "At", "Lb", "In", "UR", "MT", "OP", "SY", "Xo", "No", "Ns", "Pf", "Ta"}
# mdoc macros that may appear as callable words inside another mdoc line: dropped, or mapped.
MDOC_CALLABLE = {"Ar", "Cm", "Dv", "Er", "Ev", "Fa", "Ic", "Li", "Nm", "Pa", "Sy", "Em", "Va", "Ql", "Dq",
                 "Qq", "Sq", "Pq", "Op", "Oo", "Oc", "Ns", "No", "Xo", "Xc", "Ta", "Pf", "Ux", "Bro", "Brc",
                 "Aq", "Ao", "Ac", "Bq", "Bo", "Bc", "Do", "Dc", "Qo", "Qc", "So", "Sc", "Po", "Pc", "Eo", "Ec",
                 "Ad", "An", "Cd", "Fn", "Ft", "Sx", "Tn", "Lk", "Mt", "Ms", "Xr", "Fl", "Va", "Vt", "Ot", "Em",
                 "Ux", "Nd", "Sm", "Bk", "Ek"}


def _mdoc_words(args: list[str], names: list[str] | None = None, budget: Budget | None = None) -> str:
    """Words of an mdoc line: callable macro names vanish, ``Fl x`` -> ``-x``, ``Xr a 1`` -> ``a(1)``,
    a bare ``Nm`` -> the page's name (the first ``.Nm`` argument; charged to ``budget``), ``Ux`` -> UNIX."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if a == "Fl":
            flag = "-"
            if nxt is not None and nxt not in MDOC_CALLABLE:
                flag += nxt
                i += 1
            out.append(flag)
        elif a == "Xr" and i + 2 < len(args):
            out.append(f"{args[i + 1]}({args[i + 2]})")
            i += 2
        elif a == "Nm" and names is not None:
            if nxt is None or nxt in MDOC_CALLABLE or not nxt[:1].isalnum():
                if names:
                    out.append(budget.take(names[0]) if budget is not None else names[0])
            elif not names:
                names.append(nxt)
        elif a == "Ux":
            out.append("UNIX")
        elif a in MDOC_CALLABLE:
            pass
        else:
            out.append(a)
        i += 1
    return " ".join(out)


def _cond(expr: str, strings: dict[str, str], budget: Budget | None = None) -> tuple[bool, str]:
    """Evaluate the condition of ``.if``/``.ie`` (nroff semantics); return (value, rest of the line)."""
    s = expr.lstrip()
    neg = s.startswith("!")
    if neg:
        s = s[1:]
    value = False
    if s[:1] in ("n", "o") and (len(s) == 1 or not s[1].isalnum()):
        value, s = True, s[1:]
    elif s[:1] in ("t", "e", "v") and (len(s) == 1 or not s[1].isalnum()):
        value, s = False, s[1:]
    elif s[:1] in ("d", "r", "c", "m", "F", "S") and len(s) > 1 and s[1] == " ":
        parts = s[2:].lstrip().split(None, 1)
        value = False if s[0] != "d" else parts[0] in strings if parts else False
        s = parts[1] if len(parts) > 1 else ""
    elif s[:1] and not s[0].isalnum() and s[0] not in "(\\+-":  # 'a'b' string comparison
        d = s[0]
        parts = s[1:].split(d, 2)
        if len(parts) == 3:
            a = render_escapes(parts[0], strings, budget)
            b = render_escapes(parts[1], strings, budget)
            value, s = a == b, parts[2]
        else:
            s = ""
    else:  # numeric expression: a literal number is honoured, anything else (registers) is false
        m = re.match(r"\(?\s*([+-]?\d+)\s*\)?(?=\s|\\\{|$)", s)
        if m:
            value, s = int(m.group(1)) > 0, s[m.end():]
        else:
            m = re.match(r"\S+", s)
            s = s[m.end():] if m else ""
    return (not value) if neg else value, s


BREAKS = {"TP", "TQ", "PP", "LP", "P", "Pp", "HP", "Lp", "RS", "RE", "Bl", "El", "sp", "Sp", "bp"}
DEFINITIONS = {"de", "de1", "am", "ig", "am1", "dei", "ami"}  # skipped up to their end marker


def _join_continuations(src: str) -> list[str]:
    """Source lines with continuation lines (a trailing unescaped backslash) joined."""
    joined: list[str] = []
    buf: list[str] = []  # (a list: joining n continuation lines stays linear)
    for ln in src.replace("\r\n", "\n").split("\n"):
        if ln.endswith("\\") and not ln.endswith("\\\\"):
            buf.append(ln[:-1])
            continue
        joined.append("".join(buf) + ln)
        buf = []
    if buf:
        joined.append("".join(buf))
    return joined


class _Page:
    """The state of one page being read line by line; ``out`` collects output lines, "" = paragraph break."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.depth = 0  # conditionals nested on the current line
        self.strings: dict[str, str] = {}  # .ds strings
        self.out: list[str] = []
        self.nofill = False
        self.skip_until: str | None = None  # inside .de/.ig: the line that ends it
        self.skip_depth = 0  # >0: inside a false conditional \{ ... \} block
        self.last_ie = True
        self.table = 0  # 1: in a table's options/format lines, 2: in its data lines
        self.tab = "\t"
        self.names: list[str] = []  # mdoc: the page's name, for a bare .Nm

    def emit(self, text: str) -> None:
        if text.strip() or self.nofill:
            self.out.append(text)

    def para(self) -> None:
        if self.out and self.out[-1] != "":
            self.out.append("")

    def render(self, s: str) -> str:
        return render_escapes(s, self.strings, self.budget)

    def line(self, line: str) -> None:
        self.budget.work += len(line)
        if self._skipped(line) or (self.table and self._table_line(line)):
            return
        line = line.replace("\\}", "")
        if not line.startswith((".", "'")):
            if not line.strip():
                self.para()
            else:
                self.emit(self.render(line))
            return
        body = line[1:].lstrip(" \t")
        if body.startswith(('\\"', "\\#")) or body == "":
            return
        m = re.match(r"(\S+)\s*(.*)", body)
        if m and not m.group(1).startswith("\\\""):
            self.request(m.group(1), m.group(2))

    def _skipped(self, line: str) -> bool:
        r"""Inside a false \{ ... \} block (count braces only) or a definition / ignored block."""
        if self.skip_depth:
            self.skip_depth = max(0, self.skip_depth + line.count("\\{") - line.count("\\}"))
            return True
        if self.skip_until is not None:
            if line.strip().startswith(self.skip_until):
                self.skip_until = None
            return True
        return False

    def _table_line(self, line: str) -> bool:
        """A tbl(1) line: True when handled here; a request inside a T{ ... T} cell is handled as any other."""
        stripped = line.strip()
        if stripped.startswith((".TE", "'TE")):
            self.table = 0
            self.para()
            return True
        if self.table == 1:  # options (";"-terminated) and format lines (ending with ".")
            m = re.search(r"\btab\s*\((.)\)", stripped)
            if m:
                self.tab = m.group(1)
            if stripped.endswith("."):
                self.table = 2
            return True
        if stripped.startswith(".T&"):
            self.table = 1
            return True
        if line.startswith((".", "'")):
            return False
        cells = [c.replace("T{", "").replace("T}", "") for c in line.split(self.tab)]
        row = self.render(" ".join(c.strip() for c in cells if c.strip() not in ("", "_", "="))).strip()
        if row and row not in ("_", "="):
            self.out.append(row)
        return True

    def conditional(self, name: str, rest: str) -> None:
        r""".if / .ie / .el: the rest of the line (or a \{ ... \} block) when the condition holds."""
        if name == "el":
            value, tail = not self.last_ie, rest
        else:
            value, tail = _cond(rest, self.strings, self.budget)
            if name == "ie":
                self.last_ie = value
        tail = tail.lstrip()
        block = tail.startswith("\\{")
        if block:
            tail = tail[2:]
        if not value:
            if block:
                self.skip_depth = 1 + tail.count("\\{") - tail.count("\\}")
            return
        tail = tail.lstrip()
        if tail and self.depth < MAX_NESTING:
            self.depth += 1
            try:
                self.line(tail)
            finally:
                self.depth -= 1

    def define(self, name: str, rest: str) -> None:
        """.de & co (skipped up to their end marker) and .ds/.as (strings, stored rendered)."""
        if name in DEFINITIONS:
            parts = rest.split()
            end = parts[1] if len(parts) > 1 and name != "ig" else (parts[0] if name == "ig" and parts else "")
            self.skip_until = "." + end if end else ".."
            return
        parts = rest.split(None, 1)
        if parts:
            val = parts[1] if len(parts) > 1 else ""
            if val.startswith('"'):
                val = val[1:]
            value = (self.strings.get(parts[0], "") if name == "as" else "") + self.render(val)
            self.strings[parts[0]] = value[:MAX_STRING]
            self.budget.work += len(self.strings[parts[0]])

    def layout(self, name: str, rest: str) -> bool:
        """Requests that only lay out text (tables, headings, fill mode, breaks); True when ``name`` is one."""
        if name == "TS":
            self.table, self.tab = 1, "\t"
            self.para()
        elif name in HEADINGS:
            self.para()
            self.emit(self.render(" ".join(_split_args(rest))).strip())
            self.para()
        elif name in NOFILL_ON or name in NOFILL_OFF:
            self.nofill = name in NOFILL_ON
            self.para()
        elif name in BREAKS:
            self.para()
        elif name == "br":
            self.out.append("") if self.nofill else self.para()
        else:
            return False
        return True

    def request(self, name: str, rest: str) -> None:
        """A request or macro line: conditionals and definitions, layout, macros that carry text; anything else
        (a layout request or an unknown macro) gives no text."""
        if name in ("if", "ie", "el"):
            self.conditional(name, rest)
        elif name in DEFINITIONS or name in ("ds", "ds1", "as"):
            self.define(name, rest)
        elif self.layout(name, rest):
            pass
        elif name in ("IP", "UR", "MT"):
            if name == "IP":
                self.para()
            args = _split_args(rest)
            if args:
                self.emit(self.render(args[0]))
        elif name == "It":
            self.para()
            self.emit(self.render(_mdoc_words(_split_args(rest), self.names, self.budget)))
        elif name in MDOC_CALLABLE and name not in ("Sm", "Bk", "Ek"):
            self.emit(self.render(_mdoc_words([name, *_split_args(rest)], self.names, self.budget)))
        elif name in JOINED:
            self.emit(self.render("".join(_split_args(rest))))
        elif name in SPACED:
            self.emit(self.render(_mdoc_words(_split_args(rest), self.names, self.budget)))

    def text(self) -> str:
        """Fill: lines inside a paragraph joined (nofill lines were emitted as is; newlines keep them)."""
        paras, cur = [], []
        for o in self.out:
            if o == "":
                if cur:
                    paras.append(cur)
                cur = []
            else:
                cur.append(o)
        if cur:
            paras.append(cur)
        return "\n\n".join("\n".join(p) for p in paras).strip()


def strip_troff(src: str, budget: Budget | None = None) -> str:
    """Plain text of a manual page source (see the module docstring); ``budget``: by default
    ``Budget(2 * len(src))`` (pass one to read its ``work`` afterwards)."""
    page = _Page(budget if budget is not None else Budget(2 * len(src)))
    for ln in _join_continuations(src):
        page.line(ln)
    return page.text()
