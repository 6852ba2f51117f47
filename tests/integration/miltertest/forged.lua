-- forged.lua - Authentication-Results fields carrying our authserv-id
-- (mx.test.example) and X-KMS-Warning fields from outside are removed;
-- others stay.
--   miltertest -D sock=... -D data=... -D dir=... -s forged.lua

dofile(dir .. "/kms.lua")

local forged = {
	{ name = "Authentication-Results", value = " mx.test.example; smime=pass" },
	{ name = "Authentication-Results", value = " other.example; dkim=pass" },
	{ name = "Authentication-Results", value = " MX.TEST.EXAMPLE;\n\tsmime=pass" },
	{ name = "X-KMS-Warning", value = " all is well" },
}

for _, msg in ipairs({ "alice-detached.eml", "unsigned.eml" }) do
	local conn = kms.connect()
	local reply = kms.send(conn, msg, "FORGED", forged)

	kms.expect(kms.accepted(reply), msg .. ": accepted")
	kms.expect(mt.eom_check(conn, MT_HDRDELETE, "Authentication-Results"), msg .. ": forged A-R deleted")
	kms.expect(mt.eom_check(conn, MT_HDRDELETE, "X-KMS-Warning"), msg .. ": incoming X-KMS-Warning deleted")
	mt.disconnect(conn)
end

kms.finish()
