"""The embedded default corpus: plain English text that every CPython installation has on disk
(the language reference topics of `pydoc_data`, `LICENSE.txt`, and the standard library's
docstrings), so the demo and the tests pretrain on real prose with no download."""

from __future__ import annotations

import ast
import glob
import os
import sysconfig


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def default_corpus_files() -> list[str]:
    """The files of the embedded default corpus: plain English text every CPython install has.

    ``pydoc_data/topics.py`` (the language reference as text: ~0.46 MB), ``LICENSE.txt`` and the
    top-level ``*.py`` modules of the standard library (their docstrings: ~0.9 MB).
    """
    stdlib = _stdlib_dir()
    files = []
    for rel in (os.path.join("pydoc_data", "topics.py"), "LICENSE.txt"):
        path = os.path.join(stdlib, rel)
        if os.path.isfile(path):
            files.append(path)
    files.extend(sorted(glob.glob(os.path.join(stdlib, "*.py"))))
    return files


def _pydoc_topics(path: str | None) -> list[str]:
    topics = None
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in tree.body:
                if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics"
                                                         for t in node.targets)):
                    topics = ast.literal_eval(node.value)
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            topics = None
    if not isinstance(topics, dict):
        try:
            from pydoc_data import topics as topics_module  # pylint: disable=import-outside-toplevel
            topics = topics_module.topics
        except ImportError:
            return []
    return [str(topics[k]).strip() for k in sorted(topics) if str(topics[k]).strip()]


def _docstring_documents(path: str) -> list[str]:
    """One document per module (module + function docstrings) and one per top-level class."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return []
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)

    def docs_under(node) -> list[str]:
        out = []
        for sub in ast.walk(node):
            if isinstance(sub, (ast.ClassDef, *funcs)):
                doc = ast.get_docstring(sub)
                if doc:
                    out.append(doc)
        return out

    module_parts = [ast.get_docstring(tree) or ""]
    documents = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            text = "\n\n".join(docs_under(node)).strip()
            if len(text) >= 40:
                documents.append(text)
        elif isinstance(node, funcs):
            module_parts.extend(docs_under(node))
    module_text = "\n\n".join(p for p in module_parts if p).strip()
    if len(module_text) >= 40:
        documents.insert(0, module_text)
    return documents


_DEFAULT_CORPUS_CACHE: list[str] | None = None


def default_corpus_documents() -> list[str]:
    """The embedded default corpus as a list of documents (~1.4 MB of English text, ~700 docs).

    No download: the Python language reference topics shipped as ``pydoc_data`` (one document per
    topic), the CPython ``LICENSE.txt`` and the docstrings of the standard library's top-level
    modules (one document per module and one per top-level class). Deterministic for a given
    Python install; cached after the first call (returns a fresh list).
    """
    global _DEFAULT_CORPUS_CACHE
    if _DEFAULT_CORPUS_CACHE is None:
        files = default_corpus_files()
        topics_path = next((f for f in files if f.endswith(os.path.join("pydoc_data", "topics.py"))), None)
        documents = _pydoc_topics(topics_path)
        for path in files:
            if path.endswith("LICENSE.txt"):
                try:
                    with open(path, encoding="utf-8") as f:
                        text = f.read().strip()
                except (OSError, UnicodeDecodeError):
                    text = ""
                if text:
                    documents.append(text)
            elif path.endswith(".py") and path != topics_path:
                documents.extend(_docstring_documents(path))
        documents = list(dict.fromkeys(documents))  # exact duplicates (e.g. aliased topics) once
        if not documents:
            raise RuntimeError(f"The default corpus is empty: no text found under {_stdlib_dir()}")
        _DEFAULT_CORPUS_CACHE = documents
    return list(_DEFAULT_CORPUS_CACHE)
