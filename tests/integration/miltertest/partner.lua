-- partner.lua - one message of the partner PKI through kmsd, and what kmsd
-- answered:
--   miltertest -D sock=... -D data=PKIDIR -D dir=... -D msg=alice.eml \
--       -D expect=tempfail|revoked|unknown|pass -s partner.lua
-- tempfail: 451 while the first fetch of the CRL runs; revoked: accepted
-- with the warning header naming the revocation; unknown: accepted, the
-- Authentication-Results says "revocation unknown"; pass: accepted, known.

dofile(dir .. "/kms.lua")

local conn = kms.connect()
local reply = kms.send(conn, msg, "PARTNER1")
local ar = kms.added(conn, "Authentication-Results") or ""
local warn = kms.added(conn, "X-KMS-Warning") or ""

mt.echo("# reply " .. tostring(reply) .. " A-R: " .. ar:gsub("\n", " ") .. " warning: " .. warn)
if expect == "tempfail" then
	kms.expect(reply == SMFIR_REPLYCODE, msg .. ": tempfailed while the CRL is fetched")
	kms.expect(ar == "", msg .. ": no header added to a tempfailed message")
elseif expect == "revoked" then
	kms.expect(kms.accepted(reply), msg .. ": accepted (on_revoked = warn)")
	kms.expect(warn:find("was revoked on", 1, true) ~= nil, msg .. ": X-KMS-Warning names the revocation")
	kms.expect(ar:find("smime=fail (revoked:", 1, true) ~= nil, msg .. ": Authentication-Results says revoked")
elseif expect == "unknown" then
	kms.expect(kms.accepted(reply), msg .. ": accepted")
	kms.expect(ar:find("revocation unknown", 1, true) ~= nil, msg .. ": Authentication-Results says revocation unknown")
elseif expect == "pass" then
	kms.expect(kms.accepted(reply), msg .. ": accepted")
	kms.expect(ar:find("smime=pass", 1, true) ~= nil and ar:find("unknown", 1, true) == nil,
	    msg .. ": pass with a known status")
else
	error("set -D expect=tempfail|revoked|unknown|pass")
end
mt.disconnect(conn)
kms.finish()
