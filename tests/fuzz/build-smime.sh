#!/bin/sh
# build-smime.sh - build the libFuzzer harness for the S/MIME entry point
# (tests/fuzz/fuzz_smime.c) with clang, ASan and UBSan, in its own build
# directory, and print how to run it.  Not part of make check.
#
#   sh tests/fuzz/build-smime.sh [BUILDDIR]      (from the top of the tree)
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
b=${1:-$src/../build-fuzz}
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
mkdir -p "$b"
cd "$b"
if [ ! -f Makefile ]; then
	CC=clang CFLAGS="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $san" \
	    LDFLAGS="$san" "$src/configure" >/dev/null
fi
make -j2 milter/libkmsmilter.a ca/libkmsca.a policy/libkmspolicy.a common/libkmscommon.a >/dev/null
# shellcheck disable=SC2046
clang -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer $san -DHAVE_CONFIG_H -I. -I"$src" \
    $(pkg-config --cflags gmime-3.0 openssl jansson) \
    "$src/tests/fuzz/fuzz_smime.c" -o fuzz_smime \
    milter/libkmsmilter.a ca/libkmsca.a policy/libkmspolicy.a common/libkmscommon.a \
    $(pkg-config --libs gmime-3.0 openssl jansson sqlite3 inih libcurl) -lmilter -lpthread
mkdir -p corpus
# Seeds as SMTP carries them (CRLF), so that their signatures verify and the
# per-signature paths (revoked, partial, header protection) are reached.
for f in "$src"/tests/data/smime/*.eml "$src"/tests/data/hostile/*.eml; do
	sed 's/\r*$/\r/' "$f" > "corpus/$(basename "$(dirname "$f")")-$(basename "$f")"
done
echo "built $b/fuzz_smime; run for ten minutes (or an hour) with:"
echo "  cd $b && KMS_FUZZ_DATA=$src/tests/data/smime ./fuzz_smime -dict=$src/tests/fuzz/smime.dict -max_total_time=600 -rss_limit_mb=2048 -max_len=262144 corpus"
