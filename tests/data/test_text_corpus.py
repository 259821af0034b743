"""Corpora: Markdown stripping, the bundled plays, users' files, clear errors, the held-out split."""

from __future__ import annotations

import json

import pytest

from transmamba.data.text import (
    DataError,
    Document,
    load_documents,
    shakespeare_files,
    strip_markdown,
    train_val_split,
)


def test_strip_markdown_removes_markup_keeps_lines():
    md = ("# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches_\n\n**First Witch**  \n"
          "When shall we three meet again  \nIn thunder, lightning, or in rain?\n\n__\\[Aside]_  \n"
          "A [link](http://x) and `code` and snake_case\n\n\n\n---\n")
    out = strip_markdown(md)
    assert out.splitlines()[:6] == ["Macbeth", "", "ACT I", "", "Thunder. Enter three Witches", ""]
    assert "First Witch\nWhen shall we three meet again\nIn thunder" in out
    assert "[Aside]" in out and "A link and code and snake_case" in out
    assert "*" not in out and "#" not in out and "\n\n\n" not in out


def test_bundled_shakespeare_is_38_plays_without_markup():
    files = shakespeare_files()
    assert len(files) == 38
    docs = load_documents()
    assert len(docs) == 38
    hamlet = next(d for d in docs if d.name.endswith("hamlet"))
    assert "HAMLET" in hamlet.text and "**" not in hamlet.text


def test_user_files_folder_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Title\n\n**bold** text\n")
    (tmp_path / "skip.bin").write_bytes(b"\xff\x00")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.md").write_text("hidden folders are skipped\n")
    docs = load_documents(tmp_path)
    assert [d.name for d in docs] == ["a.txt", "sub/b.md"]
    assert docs[1].text == "Title\n\nbold text\n"
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert [d.text for d in load_documents(jl, text_field="body")] == ["one", "two"]
    with pytest.raises(DataError, match=r"d.jsonl:1: no 'text' field.*--text_field"):
        load_documents(jl)


def test_parquet_needs_pyarrow_or_loads(tmp_path):
    path = tmp_path / "x.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(DataError, match="pyarrow"):
            load_documents(path)
        return
    pq.write_table(pa.table({"text": ["a b", "c d"]}), path)
    assert [d.text for d in load_documents(path)] == ["a b", "c d"]


def test_missing_and_empty_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_documents(tmp_path / "nope.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .txt, .md, .jsonl or .parquet files"):
        load_documents(empty)
    (empty / "blank.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="holds no text"):
        load_documents(empty)


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"line one\ncaf" + b"\xe9 au lait\n")
    with pytest.raises(DataError) as err:
        load_documents(tmp_path)
    msg = str(err.value)
    assert "latin.txt" in msg and "byte offset 12" in msg and "line 2" in msg


def test_split_by_document_is_deterministic_and_disjoint():
    docs = [Document(f"doc{i}", f"text {i}\n") for i in range(40)]
    tr, va = train_val_split(docs, 0.1, seed=0)
    tr2, va2 = train_val_split(list(reversed(docs)), 0.1, seed=0)
    assert len(va) == 4 and len(tr) == 36
    assert {d.name for d in va} == {d.name for d in va2}
    assert not {d.name for d in tr} & {d.name for d in va}
    _, va3 = train_val_split(docs, 0.1, seed=1)
    assert {d.name for d in va3} != {d.name for d in va}
    # a single document is cut at line breaks so both splits exist
    one = [Document("only", "".join(f"line {i}\n" for i in range(500)))]
    tr, va = train_val_split(one, 0.05)
    assert tr and va and not {d.name for d in tr} & {d.name for d in va}
