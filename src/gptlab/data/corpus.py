"""The sources as a corpus: documents of cleaned text, streamed afresh on every pass."""

from __future__ import annotations

from collections.abc import Iterator

from gptlab.data.cleaning import CleaningRules, clean_document, gutenberg_bounds
from gptlab.data.sources import find_text_files, read_blocks


class Corpus:
    """The sources as documents of cleaned text, read afresh (streaming) on every pass."""

    def __init__(self, sources: list[str], cleaning: CleaningRules | None = None, encoding_errors: str = "strict"):
        self.files, self.skipped = find_text_files(sources)
        self.rules = cleaning or CleaningRules()
        self.errors = encoding_errors
        # Gutenberg's header and footer are found by a quick scan first, so the cleaning pass can stream
        self.bounds = [
            gutenberg_bounds(read_blocks(f.path, encoding_errors)) if self.rules.strip_gutenberg else None
            for f in self.files
        ]

    def blocks(self, doc: int, report: dict | None = None, stats: dict | None = None) -> Iterator[str]:
        return clean_document(
            read_blocks(self.files[doc].path, self.errors, stats), self.rules, report, self.bounds[doc]
        )
