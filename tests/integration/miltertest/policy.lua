-- policy.lua - the action [policy] on_revoked names, for a revoked signer.
--   miltertest -D sock=... -D data=... -D dir=... -D policy=reject|tempfail|quarantine|accept \
--       -D detail="..." -s policy.lua
-- kmsd must run with [policy] on_revoked = <policy>.  detail is the
-- verdict detail kmsd gives dave-revoked.eml (what `kmsd -t` prints in
-- parentheses after "revoked: "): miltertest matches a reply only as a
-- whole (code, enhanced code and text), so the script needs the text.

dofile(dir .. "/kms.lua")

local conn = kms.connect()
local reply = kms.send(conn, "dave-revoked.eml", "POLICY1")

if policy == "reject" then
	kms.expect(reply == SMFIR_REPLYCODE, "reject: a reply code")
	kms.expect(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "S/MIME revoked: " .. detail),
	    "reject: 550 5.7.1 naming the reason")
elseif policy == "tempfail" then
	kms.expect(reply == SMFIR_REPLYCODE, "tempfail: a reply code")
	kms.expect(mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", "S/MIME revoked: " .. detail),
	    "tempfail: 451 4.7.1 naming the reason")
elseif policy == "quarantine" then
	kms.expect(kms.accepted(reply), "quarantine: accepted")
	kms.expect(mt.eom_check(conn, MT_QUARANTINE), "quarantine: quarantined")
	kms.expect(mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results"), "quarantine: A-R inserted")
	kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "quarantine: body untouched")
elseif policy == "accept" then
	kms.expect(kms.accepted(reply), "accept: accepted")
	kms.expect(mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results"), "accept: A-R inserted")
	kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "accept: body untouched")
	kms.expect(not mt.eom_check(conn, MT_HDRCHANGE, "Subject"), "accept: subject untouched")
else
	error("set -D policy=reject|tempfail|quarantine|accept")
end
mt.disconnect(conn)

-- The connection still works after the decision.
conn = kms.connect()
reply = kms.send(conn, "alice-detached.eml", "POLICY2")
kms.expect(kms.accepted(reply), policy .. ": the next message passes")
mt.disconnect(conn)
kms.finish()
