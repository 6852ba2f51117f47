-- verdicts.lua - each verdict's header and actions under the default
-- policy (accept with the header; warn for revoked).
--   miltertest -D sock=unix:PATH -D data=tests/data/smime -D dir=THIS_DIR -s verdicts.lua
-- kmsd must trust tests/data/smime/ca.pem ([milter] trust_file) and load
-- tests/data/smime/crl.pem ([crl] external, external_ca = ca.pem).

dofile(dir .. "/kms.lua")

local cases = {
	{ "alice-detached.eml", "smime=pass" },
	{ "alice-opaque.eml", "smime=pass" },
	{ "alice-gpgsm.eml", "smime=pass" },
	{ "bob-ecdsa.eml", "smime=pass" },
	{ "alice-tampered.eml", "smime=fail (fail:" },
	{ "garbage-signature.eml", "smime=fail (fail:" },
	{ "eve-expired.eml", "smime=neutral (expired:" },
	{ "mallory-untrusted.eml", "smime=neutral (untrusted:" },
	{ "alice-mismatch.eml", "smime=policy (mismatch:" },
	{ "encrypted.eml", "smime=none (encrypted:" },
}

for i, c in ipairs(cases) do
	local conn = kms.connect()
	local reply = kms.send(conn, c[1], "VERDICT" .. i)
	local ar = kms.added(conn, "Authentication-Results")

	kms.expect(kms.accepted(reply), c[1] .. ": accepted")
	kms.expect(ar ~= nil and ar:find("^mx%.test%.example;") ~= nil, c[1] .. ": A-R carries our authserv-id")
	kms.expect(ar ~= nil and (mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results", " " .. ar, 0) or
	    mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results", ar, 0)), c[1] .. ": A-R inserted at the top (index 0)")
	kms.expect(ar ~= nil and ar:find(c[2], 1, true) ~= nil, c[1] .. ": A-R says " .. c[2])
	kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), c[1] .. ": body untouched")
	kms.expect(not mt.eom_check(conn, MT_HDRCHANGE, "Subject"), c[1] .. ": subject untouched")
	kms.expect(not mt.eom_check(conn, MT_HDRADD, "X-KMS-Warning"), c[1] .. ": no warning field")
	mt.disconnect(conn)
end

-- A good signature names the signer.
do
	local conn = kms.connect()
	kms.send(conn, "alice-detached.eml", "PASS1")
	local ar = kms.added(conn, "Authentication-Results")
	kms.expect(ar ~= nil and ar:find("body.smime-identifier=alice@example.org", 1, true) ~= nil, "pass names the signer")
	kms.expect(ar ~= nil and ar:find("body.smime-issuer=\"O=KMS Test,CN=KMS Test S/MIME CA\"", 1, true) ~= nil,
	    "pass names the issuer")
	mt.disconnect(conn)
end

-- Unsigned mail passes untouched: no header, no change.
do
	local conn = kms.connect()
	local reply = kms.send(conn, "unsigned.eml", "NONE1")
	kms.expect(kms.accepted(reply), "unsigned: accepted")
	kms.expect(not mt.eom_check(conn, MT_HDRADD) and not mt.eom_check(conn, MT_HDRINSERT), "unsigned: no header added")
	kms.expect(not mt.eom_check(conn, MT_HDRCHANGE), "unsigned: no header changed")
	kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "unsigned: body untouched")
	mt.disconnect(conn)
end

-- Revoked signer, policy warn: tag, warning field, wrapped body.
do
	local conn = kms.connect()
	local reply = kms.send(conn, "dave-revoked.eml", "REVOKED1")
	local ar = kms.added(conn, "Authentication-Results")
	local warn = kms.added(conn, "X-KMS-Warning")

	kms.expect(kms.accepted(reply), "revoked: accepted (warn)")
	kms.expect(ar ~= nil and ar:find("smime=fail (revoked:", 1, true) ~= nil, "revoked: A-R says revoked")
	kms.expect(warn ~= nil and warn:find("was revoked on ", 1, true) ~= nil and warn:find("keyCompromise", 1, true) ~= nil,
	    "revoked: X-KMS-Warning with date and reason")
	kms.expect(mt.eom_check(conn, MT_HDRCHANGE, "Subject"), "revoked: subject changed")
	kms.expect(mt.eom_check(conn, MT_HDRCHANGE, "Content-Type"), "revoked: Content-Type changed")
	kms.expect(mt.eom_check(conn, MT_BODYCHANGE), "revoked: body replaced by the wrapper")
	mt.disconnect(conn)
end

kms.finish()
