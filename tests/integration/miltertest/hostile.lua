-- hostile.lua - the hostile-message corpus (tests/data/hostile) through
-- kmsd as an MTA would send it: for each line of its "expected" file, the
-- Authentication-Results result, and the revoked-sender actions (subject
-- tag, X-KMS-Warning, the notice wrapper) exactly where expected.
--   miltertest -D sock=... -D dir=THIS_DIR -D hostile=tests/data/hostile -s hostile.lua
-- kmsd must trust tests/data/hostile/ca.pem and load its crl.pem as an
-- external CRL (dave revoked); default policy.

data = hostile
dofile(dir .. "/kms.lua")

-- The header field name changed to value (with or without the leading space an MTA may keep).
local function changed_to(conn, name, value)
	return mt.eom_check(conn, MT_HDRCHANGE, name, value) or mt.eom_check(conn, MT_HDRCHANGE, name, " " .. value)
end

local f = assert(io.open(hostile .. "/expected", "r"))
local n = 0
for line in f:lines() do
	local file, verdict, ar, marks = line:match("^(%S+%.eml)%s+(%S+)%s+(%S+)%s+(%S+)")
	if file ~= nil then
		n = n + 1
		local conn = kms.connect()
		local reply = kms.send(conn, file, "HOSTILE" .. n)
		local got = kms.added(conn, "Authentication-Results")

		kms.expect(kms.accepted(reply), file .. ": accepted")
		if verdict == "none" then
			kms.expect(got == nil, file .. ": no A-R for a message without signature")
		else
			kms.expect(got ~= nil and got:find("smime=" .. ar .. " (" .. verdict .. ":", 1, true) ~= nil,
			    file .. ": A-R says smime=" .. ar .. " (" .. verdict .. ")")
		end
		local warned = mt.eom_check(conn, MT_HDRADD, "X-KMS-Warning")
		if marks == "revoked" then
			kms.expect(warned, file .. ": X-KMS-Warning")
			kms.expect(mt.eom_check(conn, MT_BODYCHANGE), file .. ": the notice wrapper")
			if file ~= "tag-exact.eml" then
				kms.expect(mt.eom_check(conn, MT_HDRCHANGE, "Subject"), file .. ": subject tagged")
			end
		elseif marks == "warn" then
			kms.expect(warned, file .. ": X-KMS-Warning")
			kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), file .. ": body untouched")
			kms.expect(not mt.eom_check(conn, MT_HDRCHANGE, "Subject"), file .. ": no revoked-sender tag")
		else
			kms.expect(not warned, file .. ": no warning")
			kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), file .. ": body untouched")
		end
		-- The subject tag: every Subject field, unless it starts with the exact tag.
		if file == "tag-contains.eml" then
			kms.expect(changed_to(conn, "Subject", "[REVOKED SENDER] Re: [REVOKED SENDER] minutes"),
			    file .. ": tag in front though the subject holds it elsewhere")
		elseif file == "tag-other-case.eml" then
			kms.expect(changed_to(conn, "Subject", "[REVOKED SENDER] [revoked sender] minutes"),
			    file .. ": tag in front of a look-alike")
		elseif file == "tag-exact.eml" then
			kms.expect(not mt.eom_check(conn, MT_HDRCHANGE, "Subject"), file .. ": an exact tag is kept, not doubled")
		elseif file == "tag-two-subjects.eml" then
			kms.expect(changed_to(conn, "Subject", "[REVOKED SENDER] Quarterly figures"),
			    file .. ": the second Subject field tagged")
		end
		mt.disconnect(conn)
	end
end
f:close()
kms.expect(n >= 25, "the corpus has its cases (" .. n .. ")")
kms.finish()
