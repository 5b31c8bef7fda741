#!/usr/bin/env python3
"""prepare.py — text -> llm.c token shards (datasets/README.md): train / val splits and a meta.json sidecar.

  python3 datasets/prepare.py --out data/mytext INPUT...            byte-level tokens (vocab 256, no dependency)
  python3 datasets/prepare.py --out DIR --tokenizer bpe --vocab 4096 INPUT...   byte-level BPE trained here
  python3 datasets/prepare.py --out DIR --tokenizer json --tokenizer-json tokenizer.json INPUT...

INPUT: text files, directories (every regular file below them, sorted by path; --suffix filters), or @LIST (a file
naming one input a line). Each file is one document. Every document is preceded by the EOT token (llm.c's layout:
the stream starts with EOT, and EOT separates documents), so windows that cross a boundary see it.
Tokenizers:
  byte  the UTF-8 bytes are the tokens (0 .. 255); EOT = 0, the NUL byte, which text does not contain (NUL bytes in the
        input are dropped and counted). Bytes per token = 1 (less the EOTs).
  bpe   byte-level BPE trained with the `tokenizers` package on the train split only (vocab size --vocab, the special
        token <|endoftext|> = EOT = id 0); saved as OUT/tokenizer.json.
  json  a given tokenizer.json (HF format, read with `tokenizers`); EOT: --eot TOKEN, else the first of <|endoftext|>,
        </s>, <eos>, <|end_of_text|> it has. Copied to OUT/tokenizer.json.
Split: the documents are shuffled with --seed, then the first ones, up to --val-fraction of the bytes (at least one
document), are the val split; the rest, in that order, are train. Shards hold at most --shard-tokens tokens:
OUT/NAME_val_000000.bin, OUT/NAME_train_000000.bin, ... (version 1, uint16, when the vocab is <= 65,536, else
version 2, uint32). OUT/meta.json records the tokenizer (kind, vocab, EOT id, file), the source and licence you name,
and per split the shards, tokens, bytes and documents (bits per byte = loss / ln 2 * tokens / bytes).
--check reads the shards back and decodes every document again (the tokenizer round trip): any difference fails.
Errors (exit status 1, nothing written in OUT): an input that does not exist, no text at all, a tokenizer file that
does not parse, an EOT token the tokenizer lacks, a missing `tokenizers` package for bpe / json.
"""
import argparse
import array
import datetime
import json
import os
import random
import shutil
import sys

MAGIC = 20240520
HEADER_INTS = 256
EOT_NAMES = ["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>"]


class PrepError(Exception):
    pass


def list_inputs(inputs, suffixes):
    files = []
    for item in inputs:
        if item.startswith("@"):
            lst = item[1:]
            try:
                with open(lst, encoding="utf-8") as f:
                    names = [ln.strip() for ln in f if ln.strip()]
            except OSError as e:
                raise PrepError(f"{lst}: cannot read the input list: {e.strerror}")
            files += list_inputs(names, suffixes)
        elif os.path.isdir(item):
            found = []
            for root, dirs, names in os.walk(item):
                dirs.sort()
                for n in names:
                    p = os.path.join(root, n)
                    if os.path.isfile(p) and (not suffixes or any(n.endswith(s) for s in suffixes)):
                        found.append(p)
            files += sorted(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise PrepError(f"{item}: no such file or directory")
    return files


def read_documents(files, max_bytes):
    """-> [(path, bytes)]; stops once max_bytes (if > 0) are read, cutting the last document there"""
    docs, total = [], 0
    for p in files:
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PrepError(f"{p}: cannot read: {e.strerror}")
        if not data.strip():
            continue
        if max_bytes > 0 and total + len(data) > max_bytes:
            data = data[: max_bytes - total]
            # do not cut a UTF-8 sequence in half
            while data and (data[-1] & 0xC0) == 0x80:
                data = data[:-1]
            if data and data[-1] >= 0xC0:
                data = data[:-1]
        docs.append((p, data))
        total += len(data)
        if max_bytes > 0 and total >= max_bytes:
            break
    if not docs:
        raise PrepError("no text in the inputs (empty files only, or none)")
    return docs


# ---- tokenizers ----

class ByteTokenizer:
    kind, vocab, eot, file = "byte", 256, 0, None

    def __init__(self):
        self.dropped_nul = 0

    def encode(self, data):
        if b"\0" in data:
            self.dropped_nul += data.count(b"\0")
            data = data.replace(b"\0", b"")
        return data, len(data)

    def decode(self, ids):
        return bytes(list(ids))


def need_tokenizers():
    try:
        import tokenizers  # noqa: F401
        return tokenizers
    except ImportError:
        raise PrepError("the bpe and json tokenizers need the `tokenizers` package (PyPI): `pip install tokenizers`, or "
                        "run datasets/corpus.sh, which makes a venv with datasets/requirements.txt")


class HFTokenizer:
    def __init__(self, tok, kind, eot, file):
        self.tok, self.kind, self.eot, self.file = tok, kind, eot, file
        self.vocab = tok.get_vocab_size(with_added_tokens=True)

    def encode_many(self, datas):
        texts = [d.decode("utf-8", errors="replace") for d in datas]
        encs = self.tok.encode_batch(texts, add_special_tokens=False)
        return [(array.array("I", e.ids), len(t.encode("utf-8"))) for e, t in zip(encs, texts)], texts

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False).encode("utf-8")


def train_bpe(train_docs, vocab):
    tk = need_tokenizers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if vocab < 257 + 1:
        raise PrepError(f"--vocab {vocab}: byte-level BPE needs more than 257 ids (256 bytes and EOT)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((d.decode("utf-8", errors="replace") for _, d in train_docs), trainer,
                            length=len(train_docs))
    del tk
    return HFTokenizer(tok, "bpe", tok.token_to_id("<|endoftext|>"), "tokenizer.json")


def load_json_tokenizer(path, eot_name):
    need_tokenizers()
    from tokenizers import Tokenizer
    if not os.path.isfile(path):
        raise PrepError(f"{path}: no such tokenizer file")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the package raises its own error types for JSON and schema problems
        raise PrepError(f"{path}: not a tokenizer.json that the tokenizers package can read: {str(e)[:300]}")
    names = [eot_name] if eot_name else EOT_NAMES
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return HFTokenizer(tok, "json", i, "tokenizer.json")
    raise PrepError(f"{path}: the tokenizer has no end-of-text token " + (f"'{eot_name}'" if eot_name else
                    "(tried " + ", ".join(EOT_NAMES) + "; name one with --eot)"))


# ---- shards ----

def write_shard(path, ids, vocab):
    version = 1 if vocab <= 65536 else 2
    header = array.array("i", [MAGIC, version, len(ids)] + [0] * (HEADER_INTS - 3))
    body = array.array("H" if version == 1 else "I", ids)
    if sys.byteorder != "little":
        header.byteswap()
        body.byteswap()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(body.tobytes())
    os.replace(tmp, path)


def read_shard(path):
    with open(path, "rb") as f:
        data = f.read()
    header = array.array("i")
    header.frombytes(data[: HEADER_INTS * 4])
    if sys.byteorder != "little":
        header.byteswap()
    width = {(MAGIC, 1): "H", (MAGIC, 2): "I", (20240801, 7): "I"}.get((header[0], header[1]))
    if width is None:
        raise PrepError(f"{path}: not a token shard (magic {header[0]}, version {header[1]})")
    body = array.array(width)
    body.frombytes(data[HEADER_INTS * 4:])
    if sys.byteorder != "little":
        body.byteswap()
    if len(body) != header[2]:
        raise PrepError(f"{path}: the header says {header[2]} tokens, the file holds {len(body)}")
    return body


def emit_split(out, name, split, encoded, vocab, eot, shard_tokens):
    """encoded: [(ids, nbytes)] per document -> the split's record; writes the shards"""
    shards, cur, tokens, nbytes = [], array.array("I"), 0, 0

    def flush():
        nonlocal cur
        if len(cur) == 0:
            return
        fname = f"{name}_{split}_{len(shards):06d}.bin"
        write_shard(os.path.join(out, fname), cur, vocab)
        shards.append(fname)
        cur = array.array("I")

    for ids, nb in encoded:
        doc = array.array("I", [eot])
        doc.extend(ids)
        # a document longer than a shard is split across shards (windows never cross a file)
        pos = 0
        while pos < len(doc):
            room = shard_tokens - len(cur)
            cur.extend(doc[pos:pos + room])
            pos += room
            if len(cur) >= shard_tokens:
                flush()
        tokens += len(doc)
        nbytes += nb
    flush()
    return {"shards": shards, "tokens": tokens, "bytes": nbytes, "documents": len(encoded)}


def check_round_trip(out, meta, tokenizer, docs_by_split):
    """read every shard back, split the stream at EOT, decode, compare with the documents"""
    for split, docs in docs_by_split.items():
        stream = array.array("I")
        for fname in meta["splits"][split]["shards"]:
            stream.extend(array.array("I", read_shard(os.path.join(out, fname))))
        eot = tokenizer.eot
        starts = [i for i, t in enumerate(stream) if t == eot]
        if len(starts) != len(docs) or (starts and starts[0] != 0):
            raise PrepError(f"round trip: the {split} split has {len(starts)} EOT tokens for {len(docs)} documents")
        for k, (path, want) in enumerate(docs):
            end = starts[k + 1] if k + 1 < len(starts) else len(stream)
            got = tokenizer.decode(stream[starts[k] + 1:end])
            if got != want:
                i = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]), min(len(got), len(want)))
                raise PrepError(f"round trip: {path} decodes differently from byte {i} on: {got[i:i + 40]!r} "
                                f"instead of {want[i:i + 40]!r}")
    return sum(len(d) for d in docs_by_split.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("inputs", nargs="+", help="files, directories or @LIST")
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--name", default=None, help="shard name prefix (default: the output directory's name)")
    ap.add_argument("--tokenizer", choices=["byte", "bpe", "json"], default="byte")
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size (bpe)")
    ap.add_argument("--tokenizer-json", default=None, help="tokenizer.json (json)")
    ap.add_argument("--eot", default=None, help="the end-of-text token's text (json)")
    ap.add_argument("--suffix", action="append", default=[], help="only files ending so, in directories (repeat)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--shard-tokens", type=int, default=100_000_000)
    ap.add_argument("--max-bytes", type=int, default=0, help="stop after this much text (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="the document shuffle")
    ap.add_argument("--source", default="", help="where the text comes from (recorded)")
    ap.add_argument("--licence", default="", help="its licence (recorded)")
    ap.add_argument("--check", action="store_true", help="decode the shards again and compare (round trip)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    say = (lambda *x: None) if a.quiet else (lambda *x: print("prepare:", *x, flush=True))
    try:
        if not 0 < a.val_fraction < 1:
            raise PrepError(f"--val-fraction must be in (0, 1), got {a.val_fraction}")
        if a.shard_tokens < 2 or a.shard_tokens >= 2 ** 31:
            raise PrepError(f"--shard-tokens must be in 2 .. 2^31 - 1, got {a.shard_tokens}")
        if a.tokenizer == "json" and not a.tokenizer_json:
            raise PrepError("--tokenizer json needs --tokenizer-json FILE")
        files = list_inputs(a.inputs, a.suffix)
        docs = read_documents(files, a.max_bytes)
        if len(docs) < 2:
            raise PrepError(f"{len(docs)} document: a train and a val split need at least two input files")
        order = list(range(len(docs)))
        random.Random(a.seed).shuffle(order)
        docs = [docs[i] for i in order]
        total = sum(len(d) for _, d in docs)
        nval, vbytes = 0, 0
        while nval < len(docs) - 1 and (nval == 0 or vbytes < a.val_fraction * total):
            vbytes += len(docs[nval][1])
            nval += 1
        splits = {"val": docs[:nval], "train": docs[nval:]}
        say(f"{len(docs)} documents, {total / 1e6:.2f} MB: {nval} val ({vbytes / 1e6:.2f} MB), "
            f"{len(docs) - nval} train")
        if a.tokenizer == "byte":
            tok = ByteTokenizer()
        elif a.tokenizer == "bpe":
            say(f"training a byte-level BPE of {a.vocab} tokens on the train split")
            tok = train_bpe(splits["train"], a.vocab)
        else:
            tok = load_json_tokenizer(a.tokenizer_json, a.eot)
        os.makedirs(a.out, exist_ok=True)
        name = a.name or os.path.basename(os.path.normpath(a.out)) or "data"
        for f in os.listdir(a.out):  # a previous preparation's shards would mix with these
            if f.endswith(".bin") and (f"_train_" in f or "_val_" in f):
                os.remove(os.path.join(a.out, f))
        meta = {"format": "llm.c token shards: int32 header[256] (magic 20240520, version 1 = uint16 / 2 = uint32, "
                          "count), then the tokens (m2lab datasets/README.md)",
                "name": name,
                "tokenizer": {"kind": tok.kind, "vocab": tok.vocab, "eot": tok.eot, "file": tok.file},
                "source": a.source, "licence": a.licence,
                "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "command": "prepare.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "seed": a.seed, "val_fraction": a.val_fraction, "splits": {}}
        kept = {}
        for split in ("val", "train"):
            sd = splits[split]
            if a.tokenizer == "byte":
                enc = [tok.encode(d) for _, d in sd]
                kept[split] = [(p, d.replace(b"\0", b"")) for p, d in sd]
            else:
                enc, texts = tok.encode_many([d for _, d in sd])
                kept[split] = [(p, t.encode("utf-8")) for (p, _), t in zip(sd, texts)]
            meta["splits"][split] = emit_split(a.out, name, split, enc, tok.vocab, tok.eot, a.shard_tokens)
            r = meta["splits"][split]
            say(f"{split}: {r['tokens']:,} tokens in {len(r['shards'])} shard(s), {r['bytes'] / max(r['tokens'], 1):.3f} "
                f"bytes/token")
        if tok.kind == "bpe":
            tok.tok.save(os.path.join(a.out, "tokenizer.json"))
        elif tok.kind == "json" and os.path.abspath(a.tokenizer_json) != os.path.abspath(
                os.path.join(a.out, "tokenizer.json")):
            shutil.copyfile(a.tokenizer_json, os.path.join(a.out, "tokenizer.json"))
        if tok.kind == "byte" and tok.dropped_nul:
            meta["dropped_nul_bytes"] = tok.dropped_nul
            say(f"dropped {tok.dropped_nul} NUL bytes (the byte tokenizer's EOT)")
        with open(os.path.join(a.out, "meta.json.tmp"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        os.replace(os.path.join(a.out, "meta.json.tmp"), os.path.join(a.out, "meta.json"))
        if a.check:
            n = check_round_trip(a.out, meta, tok, kept)
            say(f"round trip ok: {n} documents decode to their text")
        say(f"wrote {a.out}/meta.json")
        return 0
    except PrepError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
