#!/bin/sh
# test_miltertest.sh - the miltertest scripts (each verdict's header and
# actions, forged headers, abort mid-message, two messages on one
# connection, spill to disk and the size bound, each on_revoked action)
# against kmsd on a unix milter socket and on an inet one.
src="${srcdir:-.}"
rc=0
for kind in unix inet; do
	sh "$src/tests/integration/miltertest/run.sh" "$kind"
	r=$?
	[ $r = 77 ] && exit 77
	[ $r = 0 ] || rc=1
done
exit $rc
