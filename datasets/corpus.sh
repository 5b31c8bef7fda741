#!/usr/bin/env bash
# corpus.sh — the real English corpus of the LM experiments, from Debian packages, as token shards (datasets/README.md,
# "The corpus"): installs the packages when missing, lists the documents, runs datasets/prepare.py.
#
#   bash datasets/corpus.sh                                  docs, byte-level -> data/docs-byte/
#   bash datasets/corpus.sh --tokenizer bpe --vocab 4096     byte-level BPE (a venv with `tokenizers`) -> data/docs-bpe4096/
#   bash datasets/corpus.sh --corpus pydoc --max-bytes 300000 --out /tmp/slice    a small slice (the tests)
#
# --corpus  docs (default): pydoc + kerneldoc, ~32 MB of English documentation prose
#           pydoc: the Python 3 documentation (Debian python3-doc: reST sources, ~11 MB; PSF License Agreement, its code
#                  examples also Zero-Clause BSD)
#           kerneldoc: the Linux kernel documentation (Debian linux-doc: reST sources, translations left out, ~21 MB;
#                  GPL-2.0)
# --tokenizer byte | bpe   --vocab N (bpe, default 4096)   --out DIR (default data/<corpus>-<tokenizer>)
# --max-bytes N (0: all)   --check (decode the shards again: the tokenizer round trip)   --force (rebuild)
# Other arguments go to prepare.py. Nothing is downloaded except Debian packages (apt-get) and, for bpe, the
# `tokenizers` package from PyPI into ${M2_DATA_VENV:-build/data-venv} (datasets/requirements.txt).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
corpus=docs tokenizer=byte vocab=4096 out="" max_bytes=0 force=0
extra=()
while (($#)); do
  case "$1" in
    --corpus) corpus="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --vocab) vocab="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --max-bytes) max_bytes="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
case "$corpus" in
  docs) parts=(pydoc kerneldoc) ;;
  pydoc|kerneldoc) parts=("$corpus") ;;
  *) echo "corpus.sh: unknown corpus '$corpus' (known: docs, pydoc, kerneldoc)" >&2; exit 2 ;;
esac
case "$tokenizer" in
  byte) tag=byte ;;
  bpe) tag="bpe$vocab" ;;
  *) echo "corpus.sh: --tokenizer must be byte or bpe, got '$tokenizer' (prepare.py also takes a tokenizer.json)" >&2
     exit 2 ;;
esac
[ -n "$out" ] || out="$root/data/$corpus-$tag"

# ---- the Debian packages ----
declare -A pkg=([pydoc]=python3-doc [kerneldoc]=linux-doc)
missing=()
for p in "${parts[@]}"; do
  dpkg-query -W -f='${Status}' "${pkg[$p]}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg[$p]}")
done
if ((${#missing[@]})); then
  echo "corpus.sh: installing ${missing[*]} (Debian)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- the documents: one file each, sorted ----
list="$(mktemp)"
trap 'rm -f "$list"' EXIT
source_txt="" licence_txt=""
for p in "${parts[@]}"; do
  case "$p" in
    pydoc)
      dir=$(ls -d /usr/share/doc/python3.*/html/_sources 2>/dev/null | sort -V | tail -1)
      [ -n "$dir" ] || { echo "corpus.sh: python3-doc is installed but /usr/share/doc/python3.*/html/_sources is missing" >&2; exit 1; }
      ver=$(basename "$(dirname "$(dirname "$dir")")")
      find "$dir" -name '*.txt' -type f | LC_ALL=C sort >>"$list"
      source_txt+="${source_txt:+; }the $ver documentation (Debian package $ver-doc via python3-doc, reST sources in $dir)"
      licence_txt+="${licence_txt:+; }$ver documentation: PSF License Agreement (code examples also Zero-Clause BSD), /usr/share/doc/$ver-doc/copyright and $dir/license.rst.txt"
      ;;
    kerneldoc)
      dir=$(ls -d /usr/share/doc/linux-doc-*/html/_sources 2>/dev/null | sort -V | tail -1)
      [ -n "$dir" ] || { echo "corpus.sh: linux-doc is installed but /usr/share/doc/linux-doc-*/html/_sources is missing" >&2; exit 1; }
      ver=$(basename "$(dirname "$(dirname "$dir")")")
      find "$dir" -path "$dir/translations" -prune -o -name '*.txt' -type f -print | LC_ALL=C sort >>"$list"
      source_txt+="${source_txt:+; }the Linux kernel documentation (Debian package $ver via linux-doc, reST sources in $dir, translations left out)"
      licence_txt+="${licence_txt:+; }Linux kernel documentation: GPL-2.0 (/usr/share/doc/$ver/copyright; a few files are dual-licensed, see their SPDX lines)"
      ;;
  esac
done

if [ -f "$out/meta.json" ] && [ "$force" = 0 ] && [ "$max_bytes" = 0 ]; then
  echo "corpus.sh: $out already holds shards (meta.json); --force rebuilds them"
  exit 0
fi

# ---- Python: the system's for byte-level, a venv with `tokenizers` for BPE ----
py=python3
if [ "$tokenizer" = bpe ]; then
  venv="${M2_DATA_VENV:-${M2_BUILD_DIR:-$root/build}/data-venv}"
  py="$venv/bin/python"
  if ! [ -x "$py" ] || ! "$py" -c "import tokenizers" 2>/dev/null; then
    echo "corpus.sh: creating $venv (PyPI: datasets/requirements.txt)"
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "corpus.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$py" -m pip install --quiet --disable-pip-version-check -r "$root/datasets/requirements.txt"
  fi
fi
args=(--out "$out" --tokenizer "$tokenizer" --max-bytes "$max_bytes" --source "$source_txt" --licence "$licence_txt")
[ "$tokenizer" = bpe ] && args+=(--vocab "$vocab")
"$py" "$root/datasets/prepare.py" "${args[@]}" "${extra[@]}" "@$list"
