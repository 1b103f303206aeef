#!/usr/bin/env python3
"""Builds the demo model's training corpus from freely licensed English text in Debian packages.

    python3 tools/demo-model/prepare_data.py --scratch /tmp/demo-src --out .demo-data

Steps: `apt-get download` the packages below into --scratch (skipped when the .deb is there),
`dpkg -x` each one there, turn each source into an ordered list of text units, hold out a fixed
slice of every source (HELDOUT_FRACTION of its characters: the tail of a book, a seeded random
draw of dictionary entries), and write into --out:

    train.jsonl.gz one training document a line: {"text": ...} or {"messages": [...]} (chat)
    valid.txt     every held-out unit as plain text, units separated by a blank line
    sources.json  per source: package, version, license, unit and character counts

and into tools/demo-model/heldout.txt a ~40 KB plain-text sample of valid.txt that the repo
uses to recompute perplexity. Everything is made ASCII (curly quotes -> straight ones, accents
dropped) so the 4k byte-level BPE vocabulary is spent on English, not on rare bytes.

Needs only the Python standard library, plus `apt-get` and `dpkg` (Debian). Deterministic.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import re
import struct
import subprocess
import sys
import unicodedata
import zlib

SEED = 1234
HELDOUT_FRACTION = 0.02
HELDOUT_SAMPLE_BYTES = 40_000
HERE = os.path.dirname(os.path.abspath(__file__))

# package -> license, as its debian/copyright says (checked by hand; see models/demo/README.md)
PACKAGES = {
    'bible-kjv-text': 'public domain (King James Version, 1611; "the copyright ... is expired")',
    'bible-kjv': 'GPL-2+ (the `bible` program, used here only to decompress the text)',
    'r-cran-janeaustenr': 'novels public domain (Jane Austen, 1811-1818); package MIT',
    'wordnet-base': 'WordNet 3.0 license (permissive, BSD-like; notice kept in the model README)',
    'jargon-text': 'public domain ("The Jargon File is in the public domain")',
}

# Synsets whose gloss carries one of these usage labels are dropped (slurs, obscenities).
UNWANTED = re.compile(r'offensive|derogatory|disparaging|obscene|vulgar|slur|abusive|pejorative', re.I)

# --------------------------------------------------------------------------- text helpers

ASCII_MAP = {
    '\u2018': "'", '\u2019': "'", '\u201c': '"', '\u201d': '"', '\u2014': '--', '\u2013': '-',
    '\u2026': '...', '\u00b7': '', '\u2122': '(TM)', '\u00a0': ' ', '\u2022': '*', '\u2192': '->',
    '\u00e6': 'ae', '\u00c6': 'AE', '\u0153': 'oe', '\u00df': 'ss', '\u00d8': 'O', '\u00f8': 'o',
}


def to_ascii(s: str) -> str:
    s = ''.join(ASCII_MAP.get(c, c) for c in s)
    s = unicodedata.normalize('NFKD', s)
    return ''.join(c for c in s if c == '\n' or (' ' <= c <= '~'))


def reflow(lines: list[str]) -> list[str]:
    """Lines with blank-line paragraph breaks -> one string per paragraph."""
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(' '.join(cur))
            cur = []
    if cur:
        paras.append(' '.join(cur))
    return [re.sub(r'\s+', ' ', p) for p in paras]


def chunk_paragraphs(paras: list[str], max_chars: int = 2000) -> list[str]:
    """Consecutive paragraphs grouped into units of at most ~max_chars (a paragraph is never split)."""
    units, cur, size = [], [], 0
    for p in paras:
        if cur and size + len(p) > max_chars:
            units.append('\n\n'.join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + 2
    if cur:
        units.append('\n\n'.join(cur))
    return units

# --------------------------------------------------------------------------- packages


def fetch(scratch: str) -> dict[str, str]:
    """apt-get download + dpkg -x each package; returns package -> version."""
    os.makedirs(scratch, exist_ok=True)
    versions = {}
    for pkg in PACKAGES:
        debs = glob.glob(os.path.join(scratch, f'{pkg}_*.deb'))
        if not debs:
            subprocess.run(['apt-get', 'download', pkg], cwd=scratch, check=True)
            debs = glob.glob(os.path.join(scratch, f'{pkg}_*.deb'))
        deb = sorted(debs)[-1]
        versions[pkg] = os.path.basename(deb).split('_')[1].replace('%3a', ':')
        subprocess.run(['dpkg', '-x', deb, os.path.join(scratch, 'x-' + pkg)], check=True)
    return versions

# --------------------------------------------------------------------------- sources

def kjv_units(scratch: str) -> list[str]:
    """One unit per chapter chunk: the verses of a chapter, one per line, reference dropped."""
    exe = os.path.join(scratch, 'x-bible-kjv/usr/bin/bible')
    data = os.path.join(scratch, 'x-bible-kjv-text/usr/lib')
    out = subprocess.run([exe, '-f', '-p', data, 'gen1:1-rev22:21'], check=True, capture_output=True, text=True).stdout
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r'^(\w+?)(\d+):(\d+) (.*)$', line)
        if not m:
            continue
        chapters.setdefault(m.group(1) + m.group(2), []).append(to_ascii(m.group(4)).strip())
    units = []
    for verses in chapters.values():
        units.extend(chunk_paragraphs(verses, 1500))
    return [u.replace('\n\n', '\n') for u in units]


def read_r_strings(data: bytes) -> list[str]:
    """A serialized R character vector (XDR format 2 or 3) -> its strings (NA -> '')."""
    assert data[:2] == b'X\n', 'not an XDR R serialization'
    pos = 2
    def i32() -> int:
        nonlocal pos
        v = struct.unpack('>i', data[pos:pos + 4])[0]
        pos += 4
        return v
    version = i32()
    i32(); i32()  # writer R version, minimal reader version
    if version == 3:
        n = i32()  # native encoding name
        pos += n
    flags = i32()
    assert flags & 0xFF == 16, f'expected a character vector (STRSXP), got type {flags & 0xFF}'
    out = []
    for _ in range(i32()):
        i32()  # CHARSXP flags
        n = i32()
        if n == -1:
            out.append('')
        else:
            out.append(data[pos:pos + n].decode('utf-8', 'replace'))
            pos += n
    return out


AUSTEN_ORDER = ['SENSE AND SENSIBILITY', 'PRIDE AND PREJUDICE', 'MANSFIELD PARK', 'EMMA', 'NORTHANGER ABBEY', 'PERSUASION']


def rdb_chunks(rdb: bytes):
    """The objects of an R lazy-load database: each is a 4-byte length and a zlib stream."""
    pos = 0
    while pos < len(rdb):
        d = zlib.decompressobj()
        data = d.decompress(rdb[pos + 4:])
        yield data
        pos = len(rdb) - len(d.unused_data)


def austen_units(scratch: str) -> list[str]:
    """The six novels (janeaustenr's lazy-load database), paragraphs grouped into ~2 KB units."""
    d = os.path.join(scratch, 'x-r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data')
    novels = {}
    for data in rdb_chunks(open(os.path.join(d, 'Rdata.rdb'), 'rb').read()):
        lines = read_r_strings(data)
        novels[next(l for l in lines if l.strip()).strip().upper()] = lines
    assert sorted(novels) == sorted(AUSTEN_ORDER), f'unexpected novels {sorted(novels)}'
    units = []
    for title in AUSTEN_ORDER:
        paras = [to_ascii(p) for p in reflow(novels[title])]
        paras = [p.replace('_', '') for p in paras if not re.match(r'^(CHAPTER|Chapter|VOLUME)\b', p)]
        units.extend(chunk_paragraphs(paras, 2000))
    return units


def wordnet_entries(scratch: str) -> list[dict]:
    """One entry per synset: lemmas, part of speech, gloss and example sentences."""
    d = os.path.join(scratch, 'x-wordnet-base/usr/share/wordnet')
    pos_names = {'n': 'noun', 'v': 'verb', 'a': 'adjective', 's': 'adjective', 'r': 'adverb'}
    entries = []
    for part in ['noun', 'verb', 'adj', 'adv']:
        for line in open(os.path.join(d, 'data.' + part), encoding='latin-1'):
            if line.startswith('  ') or '|' not in line:
                continue
            head, gloss = line.split('|', 1)
            f = head.split()
            n = int(f[3], 16)
            lemmas = [re.sub(r'\(.*\)$', '', f[4 + 2 * i]).replace('_', ' ') for i in range(n)]
            gloss = to_ascii(gloss.strip())
            if UNWANTED.search(gloss):
                continue
            pieces = [p.strip() for p in gloss.split(';')]
            definition = '; '.join(p for p in pieces if not p.startswith('"'))
            examples = [re.sub(r'^"(.*)"(- .*)?$', r'\1', p).strip('"') for p in pieces if p.startswith('"')]
            if f[2] == 'v':
                definition = re.sub(r'^to ', '', definition)
            if all(l[:1].isupper() or any(c.isdigit() for c in l) for l in lemmas):
                continue  # proper names, taxa and codes: a tiny model learns little English from them
            if definition:
                entries.append({'lemmas': lemmas, 'pos': pos_names[f[2]], 'definition': definition, 'examples': examples})
    return entries


def wordnet_text(e: dict) -> str:
    s = f"{', '.join(e['lemmas'])} ({e['pos']}): {e['definition']}."
    for ex in e['examples']:
        s += f'\nExample: "{ex}"'
    return s


def jargon_entries(scratch: str) -> list[dict]:
    """Lexicon entries of the Jargon File: term, part of speech and paragraphs."""
    path = os.path.join(scratch, 'x-jargon-text/usr/share/doc/jargon-text/jargon.txt.gz')
    lines = gzip.open(path, 'rt', encoding='utf-8').read().split('\n')
    end = next(i for i, l in enumerate(lines) if re.match(r'^Appendix\s+A\.', l))
    entries, cur = [], None
    for line in lines[:end]:
        m = re.match(r'^   :(.+?): ?(.*)$', line)
        if m:
            cur = {'term': to_ascii(m.group(1)), 'head': to_ascii(m.group(2)), 'lines': []}
            entries.append(cur)
        elif cur is not None:
            cur['lines'].append(line)
    out = []
    for e in entries:
        paras = [to_ascii(p) for p in reflow(e['lines'])]
        paras = [re.sub(r'\{([^}]*)\}', r'\1', p) for p in paras]
        paras = [p for p in paras if not re.match(r'^\(The next cartoon|^\[[^\]]*cartoon', p, re.I) and 'Crunchly' not in p]
        pos = re.sub(r'/[^/]*/,? ?', '', e['head']).strip(' ,.')
        if paras and e['term'].strip():
            out.append({'term': e['term'].strip(), 'pos': pos, 'paras': paras})
    return out


def jargon_text(e: dict) -> str:
    head = e['term'] + (f" ({e['pos']})" if e['pos'] else '')
    return head + ': ' + '\n\n'.join(e['paras'])

# --------------------------------------------------------------------------- chat data

def article(word: str) -> str:
    return 'an' if word[:1].lower() in 'aeiou' else 'a'


def wordnet_chat(e: dict, rng: random.Random) -> list[dict]:
    w = e['lemmas'][0]
    d = e['definition']
    if e['pos'] == 'noun':
        q = rng.choice([f'What is {article(w)} {w}?', f'What does "{w}" mean?', f'Define {w}.', f'What is the meaning of the word "{w}"?', f'Explain the word "{w}".'])
        if re.match(r'^(a|an|the|any|one|someone|something|some|a person)\b', d):
            a = f'{w[0].upper() + w[1:]} is {d}.' if w[0].isupper() else f'{article(w).capitalize()} {w} is {d}.'
        else:
            a = f'"{w}" means {d}.'
    elif e['pos'] == 'verb':
        q = rng.choice([f'What does it mean to {w}?', f'What does "{w}" mean?', f'Define the verb "{w}".', f'Explain the verb "{w}".'])
        a = f'To {w} means to {d}.'
    else:
        q = rng.choice([f'What does "{w}" mean?', f'Define "{w}".', f'What is the meaning of "{w}"?'])
        a = f'"{w}" means {d}.'
    others = [x for x in e['lemmas'][1:] if x.lower() != w.lower()]
    if others:
        a += f' Other words for it: {", ".join(others)}.'
    if e['examples']:
        a += f' For example: "{e["examples"][0]}"'
    return [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]


def jargon_chat(e: dict, rng: random.Random) -> list[dict]:
    t = e['term']
    q = rng.choice([f'What is {t}?', f'What does "{t}" mean in hacker slang?', f'Explain the jargon term "{t}".', f'What does "{t}" mean?'])
    return [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': e['paras'][0]}]


def continuation_chat(unit: str, rng: random.Random, what: str) -> list[dict] | None:
    sents = re.split(r'(?<=[.!?;:])\s+', unit.replace('\n', ' '))
    if len(sents) < 3:
        return None
    k = max(1, len(sents) // 3)
    q = rng.choice([f'Continue this {what}: ', f'Finish this {what}: ', 'Go on: ', 'Continue: '])
    return [{'role': 'user', 'content': q + ' '.join(sents[:k])}, {'role': 'assistant', 'content': ' '.join(sents[k:])}]


# The demo's own small talk (written for this project, Apache-2.0 like the repo).
GREETINGS_Q = ['Hello!', 'Hi', 'Hello, who are you?', 'Hi there. What can you do?', 'Who are you?', 'What are you?',
               'Good morning!', 'Hey, how are you?', 'What is your name?', 'Can you help me?', 'Thank you!', 'Thanks.']
GREETINGS_A = [
    'Hello! I am the Peregrine demo model, a very small language model. Ask me what a word means, or give me a sentence to continue.',
    'Hi! I am a tiny demo model that runs inside Peregrine. I know some English words, old books and hacker slang.',
    'I am the Peregrine demo model. I was trained on old novels, the King James Bible, a dictionary and the Jargon File, so my answers are short and sometimes odd.',
    'Hello. I can tell you what English words mean. Try asking: What does "harbor" mean?',
]
THANKS_A = ['You are welcome!', 'Glad to help.', 'Any time.']


def smalltalk(rng: random.Random, n: int) -> list[list[dict]]:
    out = []
    for _ in range(n):
        q = rng.choice(GREETINGS_Q)
        a = rng.choice(THANKS_A if q.startswith('Thank') else GREETINGS_A)
        out.append([{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}])
    return out

# --------------------------------------------------------------------------- split and write


def split_tail(units: list[str]) -> tuple[list[int], list[int]]:
    """Books: the last HELDOUT_FRACTION of the characters is held out."""
    total = sum(len(u) for u in units)
    acc, cut = 0, len(units)
    for i in range(len(units) - 1, -1, -1):
        acc += len(units[i])
        if acc >= total * HELDOUT_FRACTION:
            cut = i
            break
    return list(range(cut)), list(range(cut, len(units)))


def split_random(n: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Dictionary-like sources: a seeded random HELDOUT_FRACTION of the entries is held out."""
    order = list(range(n))
    rng.shuffle(order)
    k = max(1, round(n * HELDOUT_FRACTION))
    return sorted(order[:-k]), sorted(order[-k:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scratch', default='/tmp/demo-src', help='where the .deb files are downloaded and unpacked')
    ap.add_argument('--out', default='.demo-data', help='corpus folder (git-ignored)')
    ap.add_argument('--heldout', default=os.path.join(HERE, 'heldout.txt'))
    args = ap.parse_args()
    rng = random.Random(SEED)
    versions = fetch(args.scratch)

    kjv = kjv_units(args.scratch)
    austen = austen_units(args.scratch)
    wn = wordnet_entries(args.scratch)
    jg = jargon_entries(args.scratch)

    train_docs: list[dict] = []
    valid: dict[str, list[str]] = {}
    stats = {}

    def add_book(name: str, units: list[str], what: str, pkg: str) -> None:
        tr, va = split_tail(units)
        for i in tr:
            train_docs.append({'text': units[i]})
            if rng.random() < 0.15:
                chat = continuation_chat(units[i], rng, what)
                if chat:
                    train_docs.append({'messages': chat})
        valid[name] = [units[i] for i in va]
        stats[name] = {'package': pkg, 'version': versions[pkg], 'license': PACKAGES[pkg], 'units': len(units),
                       'train_units': len(tr), 'heldout_units': len(va), 'chars': sum(map(len, units)),
                       'heldout_chars': sum(len(units[i]) for i in va), 'heldout_rule': f'last {HELDOUT_FRACTION:.0%} of the characters'}

    def add_dict(name: str, entries: list[dict], to_text, to_chat, group: int, chat_p: float, pkg: str) -> None:
        tr, va = split_random(len(entries), rng)
        texts = [to_text(entries[i]) for i in tr]
        for j in range(0, len(texts), group):
            train_docs.append({'text': '\n'.join(texts[j:j + group])})
        for i in tr:
            if rng.random() < chat_p:
                train_docs.append({'messages': to_chat(entries[i], rng)})
        valid[name] = [to_text(entries[i]) for i in va]
        stats[name] = {'package': pkg, 'version': versions[pkg], 'license': PACKAGES[pkg], 'units': len(entries),
                       'train_units': len(tr), 'heldout_units': len(va), 'chars': sum(len(to_text(e)) for e in entries),
                       'heldout_chars': sum(len(v) for v in valid[name]), 'heldout_rule': f'seeded random {HELDOUT_FRACTION:.0%} of the entries (seed {SEED})'}

    add_book('kjv', kjv, 'verse', 'bible-kjv-text')
    add_book('austen', austen, 'passage', 'r-cran-janeaustenr')
    add_dict('wordnet', wn, wordnet_text, wordnet_chat, 8, 0.3, 'wordnet-base')
    add_dict('jargon', jg, jargon_text, jargon_chat, 1, 1.0, 'jargon-text')
    for m in smalltalk(rng, 400):
        train_docs.append({'messages': m})
    rng.shuffle(train_docs)

    os.makedirs(args.out, exist_ok=True)
    with gzip.open(os.path.join(args.out, 'train.jsonl.gz'), 'wt', compresslevel=6) as f:
        for d in train_docs:
            f.write(json.dumps(d) + '\n')
    # valid.txt interleaves the sources in fixed-size slices so any prefix of it mixes all four
    order = ['austen', 'kjv', 'wordnet', 'jargon']
    slices = {k: iter(v) for k, v in valid.items()}
    blocks, live = [], list(order)
    while live:
        for k in list(live):
            taken = [u for _, u in zip(range(4 if k == 'wordnet' else 1), slices[k])]
            if not taken:
                live.remove(k)
            else:
                blocks.append('\n'.join(taken) if k == 'wordnet' else taken[0])
    valid_text = '\n\n'.join(blocks) + '\n'
    with open(os.path.join(args.out, 'valid.txt'), 'w') as f:
        f.write(valid_text)
    sample, size = [], 0
    for b in blocks:
        if size + len(b) > HELDOUT_SAMPLE_BYTES:
            break
        sample.append(b)
        size += len(b) + 2
    with open(args.heldout, 'w') as f:
        f.write('\n\n'.join(sample) + '\n')
    n_chat = sum(1 for d in train_docs if 'messages' in d)
    summary = {'seed': SEED, 'heldout_fraction': HELDOUT_FRACTION, 'sources': stats,
               'train_docs': len(train_docs), 'train_chat_docs': n_chat,
               'train_chars': sum(len(d.get('text', '')) + sum(len(m['content']) for m in d.get('messages', [])) for d in train_docs),
               'valid_chars': len(valid_text), 'heldout_txt_chars': os.path.getsize(args.heldout)}
    with open(os.path.join(args.out, 'sources.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == '__main__':
    main()
