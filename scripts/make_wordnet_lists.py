#!/usr/bin/env python
"""Build the NegLabel candidate word lists shipped in ``clipood/data/`` from a WordNet 3.0 database.

Reads ``index.noun`` and ``index.adj`` (Debian: ``apt-get install wordnet-base`` →
``/usr/share/wordnet``), takes the lemma (first token) of every non-header line (header lines — the
licence — start with two spaces), turns underscores into spaces, de-duplicates case-insensitively,
drops adjectives that are also nouns (as NegLabel does), sorts, and writes one word per line with a
``# `` header naming the source and licence. Also copies the licence notice (WORDNET_LICENSE.txt).

    python scripts/make_wordnet_lists.py [--wordnet-dir /usr/share/wordnet] [--out-dir clipood/data]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipood.io import atomic_write  # noqa: E402

LICENSE_SOURCE = Path("/usr/share/doc/wordnet-base/copyright")
HEADER = "# WordNet 3.0 {pos} lemmas from {file} (Princeton University); WordNet 3.0 licence: see WORDNET_LICENSE.txt"


def read_index(path: Path) -> list[str]:
    """Lemmas of a WordNet ``index.*`` file, underscores → spaces, first spelling kept per lowercase form."""
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  ") or not line.strip():
                continue  # licence header
            word = line.split(" ", 1)[0].replace("_", " ").strip()
            if word:
                seen.setdefault(word.lower(), word)
    return list(seen.values())


def build_lists(wordnet_dir: Path) -> tuple[list[str], list[str]]:
    nouns = read_index(wordnet_dir / "index.noun")
    noun_keys = {w.lower() for w in nouns}
    adjectives = [w for w in read_index(wordnet_dir / "index.adj") if w.lower() not in noun_keys]
    return sorted(nouns), sorted(adjectives)


def licence_text(copyright_file: Path) -> str:
    """The WordNet 3.0 licence paragraph of a Debian copyright file, de-indented ('.' lines → blank)."""
    lines = copyright_file.read_text(encoding="utf-8").splitlines()
    out, inside = [], False
    for line in lines:
        if line.startswith("License: WordNet"):
            inside = True
            continue
        if inside:
            if not line.startswith(" "):
                break
            body = line[1:]
            out.append("" if body == "." else body)
    if not out:
        raise SystemExit(f"error: no 'License: WordNet' paragraph in {copyright_file}")
    return "\n".join(out).rstrip() + "\n"


def write_list(path: Path, header: str, words: list[str]) -> None:
    with atomic_write(path) as f:
        f.write(header + "\n")
        for w in words:
            f.write(w + "\n")
    os.chmod(path, 0o644)  # atomic_write's temporary file is 0600; shipped data must be world-readable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "clipood" / "data")
    p.add_argument("--license-file", type=Path, default=LICENSE_SOURCE,
                   help="Debian copyright file holding the WordNet 3.0 licence")
    a = p.parse_args(argv)
    for name in ("index.noun", "index.adj"):
        if not (a.wordnet_dir / name).is_file():
            print(f"error: {a.wordnet_dir / name} not found; install WordNet 3.0 "
                  "(apt-get install wordnet-base) or pass --wordnet-dir", file=sys.stderr)
            return 2
    nouns, adjectives = build_lists(a.wordnet_dir)
    write_list(a.out_dir / "wordnet_nouns.txt", HEADER.format(pos="noun", file="index.noun"), nouns)
    write_list(a.out_dir / "wordnet_adjectives.txt",
               HEADER.format(pos="adjective (also-noun lemmas dropped)", file="index.adj"), adjectives)
    if a.license_file.is_file():
        with atomic_write(a.out_dir / "WORDNET_LICENSE.txt") as f:
            f.write("WordNet 3.0 licence (applies to clipood/data/wordnet_nouns.txt and wordnet_adjectives.txt,\n"
                    "which are derived from the WordNet 3.0 database index files).\n\n")
            f.write(licence_text(a.license_file))
        os.chmod(a.out_dir / "WORDNET_LICENSE.txt", 0o644)
    else:
        print(f"warning: {a.license_file} not found; WORDNET_LICENSE.txt not written", file=sys.stderr)
    print(f"nouns: {len(nouns)}  adjectives: {len(adjectives)}  -> {a.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
