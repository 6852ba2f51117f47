#!/bin/bash
# test_audit.sh - signed audit checkpoints against a writer of the store:
# init makes an audit signer (certificate from our CA, key encrypted like
# the CA key); kmsd signs a checkpoint every [audit] checkpoint_rows rows
# and every checkpoint_interval, stores it and logs it at notice; openssl
# checks a checkpoint's signature on its own.  Then, with the sqlite3 CLI,
# the attacks a hash chain alone does not stop: a row's detail rewritten
# and the chain and meta head recomputed exactly as kmsd computes them
# (rechain.py), a checkpoint deleted in the middle, the newest deleted, an
# edited checkpoint, and the checkpoint table stripped; `kmsctl audit
# verify` (and its --offline form, against the CA certificate) passes
# before each and fails after it, naming what is wrong.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl sqlite3 python3 curl
setup

RECHAIN="${srcdir:-.}/tests/integration/rechain.py"
DB="$STATE/kms.db"
q() { sqlite3 -cmd ".timeout 5000" "$DB" "$@"; }
rows_json() {
	q -json "SELECT seq, time, uid, user, role, cmd, target, outcome, request_id, detail, prev_hash, hash FROM audit ORDER BY seq"
}
# Rows in the audit trail: each control command is one.
make_rows() { for _ in $(seq 1 "$1"); do ctl status > /dev/null 2>&1; done; }
# Wait until at least $1 checkpoints are stored (at most 10 s).
wait_checkpoints() {
	for _ in $(seq 1 100); do
		[ "$(q "SELECT count(*) FROM audit_checkpoints")" -ge "$1" ] && return 0
		sleep 0.1
	done
	return 1
}
# A fresh copy of the store, with kmsd stopped and restarted on it.
restore() {
	stop_kmsd
	rm -f "$DB" "$DB-wal" "$DB-shm"
	install -m 0600 "$T/good.db" "$DB"
	start_kmsd "$@" || fail "kmsd restarts on the saved store"
}

write_conf "[audit]" "checkpoint_rows = 5" "checkpoint_interval = 2"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Audit Test" --share-dir "$T/shares" > "$T/init.out" 2>&1
check_grep "init succeeds" "shares" "$T/init.out"

# ------------------------------------------------------------ the signer
curl -sf -o "$T/ca.der" "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt"
openssl x509 -inform DER -in "$T/ca.der" -out "$T/ca.pem" 2>/dev/null
q "SELECT value FROM meta WHERE key = 'audit_signer_cert'" > "$T/signer.pem"
check "init made an audit signer our CA issued" openssl verify -CAfile "$T/ca.pem" "$T/signer.pem"
openssl x509 -in "$T/signer.pem" -noout -text > "$T/signer.txt" 2>&1
check_grep "its subject is the audit signer's" "Subject: O ?= ?Audit Test, CN ?= ?Audit Test Audit Signer" "$T/signer.txt"
grep -A1 "X509v3 Key Usage" "$T/signer.txt" | tr -s ' \n' ' ' > "$T/ku"
check_grep "its key usage is digitalSignature alone, critical" "Key Usage: critical Digital Signature $" "$T/ku"
check_nogrep "it names no mail address and no extended key usage" "Extended Key Usage|Alternative Name|email" "$T/signer.txt"
q "SELECT value FROM meta WHERE key = 'audit_signer_key'" > "$T/signer.key"
check_grep "its key is stored encrypted, like the CA key" "BEGIN ENCRYPTED PRIVATE KEY" "$T/signer.key"
check "and opens with the CA passphrase (scrypt PKCS#8)" openssl pkey -in "$T/signer.key" -passin "file:$STATE/ca-passphrase" -noout
check_nogrep "the signer's key never reaches the log" "PRIVATE KEY" "$T/kmsd.log"

# ------------------------------------------------------- checkpoints made
make_rows 12
wait_checkpoints 3 && pass "checkpoints are signed every 5 rows" || fail "checkpoints are signed every 5 rows" \
	"$(q "SELECT no, seq FROM audit_checkpoints" | tr '\n' ' ')"
sleep 4
LAST=$(q "SELECT max(seq) FROM audit")
SIGNED=$(q "SELECT max(seq) FROM audit_checkpoints")
[ "$SIGNED" -ge $((LAST - 1)) ] && pass "the timer signs the rows left after checkpoint_interval" ||
	fail "the timer signs the rows left" "last row $LAST, last signed $SIGNED"
check_grep "each checkpoint is logged at notice with its row and head hash" \
	"notice\]: audit checkpoint #1: row [0-9]+ head [0-9a-f]{64} time 20" "$T/kmsd.log"
q "SELECT seq || ' ' || head FROM audit_checkpoints WHERE no = 1" > "$T/c1"
LOGGED=$(sed -n 's/.*audit checkpoint #1: row \([0-9]*\) head \([0-9a-f]*\) .*/\1 \2/p' "$T/kmsd.log" | head -1)
[ "$LOGGED" = "$(cat "$T/c1")" ] && pass "the logged checkpoint is the stored one" || fail "logged = stored" "$LOGGED / $(cat "$T/c1")"

# openssl, on its own, checks checkpoint 2's signature over the documented text.
q "SELECT no, seq, head, time FROM audit_checkpoints WHERE no = 2" |
	awk -F'|' '{ printf "smime-kms audit checkpoint v1\nno=%s\nseq=%s\nhead=%s\ntime=%s\n", $1, $2, $3, $4 }' > "$T/tbs"
q "SELECT hex(sig) FROM audit_checkpoints WHERE no = 2" | python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read().strip()))' > "$T/sig"
q "SELECT hex(cert) FROM audit_checkpoints WHERE no = 2" | python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read().strip()))' > "$T/ck.der"
openssl x509 -inform DER -in "$T/ck.der" -pubkey -noout > "$T/ck.pub" 2>/dev/null
check "openssl verifies a checkpoint's signature with the audit signer's key" \
	openssl dgst -sha256 -verify "$T/ck.pub" -signature "$T/sig" "$T/tbs"
check "kmsctl audit verify passes on the untouched trail" ctl audit verify
ctl audit verify > "$T/verify.out" 2>&1
check_grep "and reports the checkpoints and the last signed row" \
	"signed checkpoints verified; last signed row [0-9]+ \(20.*\); [0-9]+ rows after it not signed yet" "$T/verify.out"
rows_json > "$T/rows.json"
check "rechain.py computes every stored hash exactly as kmsd does" python3 "$RECHAIN" check < "$T/rows.json"
q ".backup '$T/good.db'"
check "audit verify --offline passes on a copy of the store, against the CA certificate kept outside it" \
	"$KMSCTL" -c "$CONF" audit verify --offline --db "$T/good.db" --ca "$T/ca.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/O=Audit Test/CN=Audit Test S\/MIME CA" \
	-keyout "$T/other.key" -out "$T/other.pem" > /dev/null 2>&1
check_fails "audit verify --offline against another CA of the same name fails" 1 \
	"audit checkpoint #1: the signer certificate was not issued by our CA" \
	"$KMSCTL" -c "$CONF" audit verify --offline --db "$T/good.db" --ca "$T/other.pem"

# ----------------------------------------------------- rewrite + rechain
# Row 3, under checkpoint CN (row CS), the one before it signing row CP.
CN=$(q "SELECT min(no) FROM audit_checkpoints WHERE seq >= 3")
CS=$(q "SELECT seq FROM audit_checkpoints WHERE no = $CN")
CP=$(q "SELECT coalesce(max(seq), 0) FROM audit_checkpoints WHERE no < $CN")
q "UPDATE audit SET detail = 'nothing to see here' WHERE seq = 3"
rows_json | python3 "$RECHAIN" rewrite | q
check "the rewritten chain and meta head pass the hash-chain check alone" sh -c "sqlite3 -json '$DB' \
	'SELECT seq, time, uid, user, role, cmd, target, outcome, request_id, detail, prev_hash, hash FROM audit ORDER BY seq' |
	python3 '$RECHAIN' check"
check_fails "audit verify fails after a row is rewritten and the chain recomputed" 1 \
	"audit rows $((CP + 1)) to $CS were rewritten: the chain hash of row $CS is not the one signed checkpoint #$CN holds" ctl audit verify
check_fails "and so does audit verify --offline" 1 "audit rows $((CP + 1)) to $CS were rewritten" \
	"$KMSCTL" -c "$CONF" audit verify --offline --db "$DB" --ca "$T/ca.pem"
ctl --json audit verify > "$T/rw.json" 2>/dev/null
check_grep "and names the first bad row and checkpoint" "\"first_bad_row\": ?$((CP + 1)),\"bad_checkpoint\": ?$CN" "$T/rw.json"
make_rows 6
sleep 3
check_grep "kmsd refuses to sign on top of the rewritten chain" \
	"the store was changed behind kmsd's back; no more checkpoints are signed" "$T/kmsd.log"

# A rewrite after the last checkpoint is not caught: that window is documented.
restore
check "audit verify passes on the saved store" ctl audit verify

# ------------------------------------------------------ checkpoint deleted
q "DELETE FROM audit_checkpoints WHERE no = 2"
check_fails "audit verify fails when a checkpoint in the middle is deleted" 1 \
	"audit checkpoint #2 is missing \(deleted\): #3 follows #1" ctl audit verify
restore
q "DELETE FROM audit_checkpoints WHERE no = (SELECT max(no) FROM audit_checkpoints)"
check_fails "audit verify fails when the newest checkpoint is deleted under a running kmsd" 1 \
	"audit checkpoint #[0-9]+ \(row [0-9]+\), signed by this kmsd, is gone" ctl audit verify

# ------------------------------------------------------- checkpoint edited
restore
q "UPDATE audit_checkpoints SET time = time + 1 WHERE no = 2"
check_fails "audit verify fails when a checkpoint is edited" 1 \
	"audit checkpoint #2: the signature does not verify \(the checkpoint was edited\)" ctl audit verify

# ------------------------------------------- a store from an older version
# Schema 8 had no checkpoints and no audit signer: the first start makes both
# and signs the rows it finds.
restore
stop_kmsd
q "DROP TABLE audit_checkpoints; DELETE FROM meta WHERE key LIKE 'audit_signer_%' OR key = 'audit_ckpt_start';
	PRAGMA user_version = 8;"
ROWS=$(q "SELECT max(seq) FROM audit")
start_kmsd || fail "kmsd starts on a schema 8 store"
check_grep "the store is migrated" "store: migrated from schema version 8" "$T/kmsd.log"
check_grep "the first start issues an audit signer" "audit signer [0-9A-Fa-f]+ issued" "$T/kmsd.log"
[ "$(q "SELECT seq FROM audit_checkpoints WHERE no = 1")" -ge "$ROWS" ] &&
	pass "and signs the rows written before checkpoints existed" ||
	fail "the old rows are signed" "$(q "SELECT no, seq FROM audit_checkpoints" | tr '\n' ' ')"
check "audit verify passes on the upgraded store" ctl audit verify

# ------------------------------------------------- checkpoint table stripped
# kmsd started without the CA key (a replica's view of the store, say) signs
# nothing; the rows without checkpoints are then more and older than kmsd
# would leave them.
restore
make_rows 12
stop_kmsd
q "DELETE FROM audit_checkpoints"
write_conf "[audit]" "checkpoint_rows = 5" "checkpoint_interval = 2" "[ca]" "enabled = no"
sleep 5
start_kmsd || fail "kmsd starts without its CA key"
check_fails "audit verify fails when the checkpoint table is stripped" 1 \
	"[0-9]+ audit rows follow the last signed checkpoint \(#0, row 0\), the oldest \(row 1\) from 20" ctl audit verify
done_testing
