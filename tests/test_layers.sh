#!/bin/sh
# test_layers.sh - the module layering of DESIGN.md section 2 holds
# (scripts/check-layers), and the checker itself catches a bad edge.
set -u
: "${srcdir:=.}"
sh "$srcdir/scripts/check-layers" --self-test || exit 1
sh "$srcdir/scripts/check-layers" "$srcdir"
