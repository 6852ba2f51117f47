-- partner.lua - one message of the partner PKI through kmsd, and what kmsd
-- answered:
--   miltertest -D sock=... -D data=PKIDIR -D dir=... -D msg=alice.eml \
--       -D expect=tempfail|refused|revoked|unknown|pass|untrusted [-D reason=R] \
--       [-D qid=ID] -s partner.lua
-- tempfail: 451 while the first fetch of the CRL runs; refused: a reply
-- code (reject or tempfail; the test reads which from the log by qid);
-- revoked: accepted with the warning header naming the revocation, its
-- date and (with reason) its reason; unknown: accepted, the
-- Authentication-Results says "revocation unknown"; pass: accepted,
-- known; untrusted: accepted, no trusted chain.

dofile(dir .. "/kms.lua")

local conn = kms.connect()
local reply = kms.send(conn, msg, qid or "PARTNER1")
local ar = kms.added(conn, "Authentication-Results") or ""
local warn = kms.added(conn, "X-KMS-Warning") or ""

mt.echo("# reply " .. tostring(reply) .. " A-R: " .. ar:gsub("\n", " ") .. " warning: " .. warn)
if expect == "tempfail" then
	kms.expect(reply == SMFIR_REPLYCODE, msg .. ": tempfailed while the CRL is fetched")
	kms.expect(ar == "", msg .. ": no header added to a tempfailed message")
elseif expect == "refused" then
	kms.expect(reply == SMFIR_REPLYCODE, msg .. ": refused with a reply code")
	kms.expect(ar == "", msg .. ": no header added to a refused message")
elseif expect == "revoked" then
	kms.expect(kms.accepted(reply), msg .. ": accepted (on_revoked = warn)")
	kms.expect(warn:find("was revoked on %d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ") ~= nil,
	    msg .. ": X-KMS-Warning names the revocation and its date")
	if reason ~= nil then
		kms.expect(warn:find("reason " .. reason, 1, true) ~= nil, msg .. ": X-KMS-Warning names the reason " .. reason)
	end
	kms.expect(ar:find("smime=fail (revoked:", 1, true) ~= nil, msg .. ": Authentication-Results says revoked")
elseif expect == "untrusted" then
	kms.expect(kms.accepted(reply), msg .. ": accepted")
	kms.expect(ar:find("smime=neutral (untrusted:", 1, true) ~= nil, msg .. ": Authentication-Results says untrusted")
elseif expect == "unknown" then
	kms.expect(kms.accepted(reply), msg .. ": accepted")
	kms.expect(ar:find("revocation unknown", 1, true) ~= nil, msg .. ": Authentication-Results says revocation unknown")
elseif expect == "pass" then
	kms.expect(kms.accepted(reply), msg .. ": accepted")
	kms.expect(ar:find("smime=pass", 1, true) ~= nil and ar:find("unknown", 1, true) == nil,
	    msg .. ": pass with a known status")
else
	error("set -D expect=tempfail|refused|revoked|unknown|pass|untrusted")
end
mt.disconnect(conn)
kms.finish()
