-- large.lua - large mail through the milter, the body checked byte for
-- byte: a revoked signer's messages of about 100 KB and 1 MB (signed
-- content that large, spilled to a temp file past [milter] max_memory) get
-- the warning wrapper, whose body must be exactly what `kmsd -t --out`
-- writes for the same file and must hold the original body unchanged; a
-- good signer's 1 MB message passes with its body untouched; an unsigned
-- message with a 10 MB attachment is accepted untouched, with no header.
-- MAIL declares an ESMTP SIZE for most (true, a lie, absurd): the buffer
-- kmsd sets up from it must never change what it checks or writes.
-- Run against a kmsd with on_revoked = warn, max_memory = 64K and
-- max_message_size = 16M that trusts the CA of big (run.sh makes it).
--   miltertest -D sock=... -D data=... -D dir=... -D big=DIR [-D wrap=0] -s large.lua

dofile(dir .. "/kms.lua")

local function readfile(path)
	local f = assert(io.open(path, "rb"))
	local s = f:read("*a")
	f:close()
	return (s:gsub("\r\n", "\n"):gsub("\n", "\r\n"))
end

-- Send the message file path whole (its own header fields); returns the reply and the body sent.
-- size: the ESMTP SIZE to declare in MAIL ("true": the message's own size), or none.
local function send_file(conn, path, qid, size)
	local msg = readfile(path)
	local fields, body = kms.split(msg)

	kms.check(mt.macro(conn, SMFIC_MAIL, "i", qid), "macro")
	if size == "true" then
		size = tostring(#msg)
	end
	if size ~= nil then
		kms.check(mt.mailfrom(conn, "<sender@example.org>", "SIZE=" .. size), "mailfrom SIZE=" .. size)
	else
		kms.check(mt.mailfrom(conn, "<sender@example.org>"), "mailfrom")
	end
	if not mt.test_option(conn, SMFIP_NORCPT) then
		kms.check(mt.rcptto(conn, "<rcpt@example.net>"), "rcptto")
	end
	for _, f in ipairs(fields) do
		-- The space after the colon goes: this miltertest puts one back in front of
		-- the value when SMFIP_HDR_LEADSPC is agreed (seen on the wire), so kmsd
		-- gets the field as written, as from an MTA, and rebuilds it byte for byte.
		local v = f.value:gsub("^ ", "")
		kms.check(mt.header(conn, f.name, v), "header " .. f.name)
	end
	kms.check(mt.eoh(conn), "eoh")
	kms.body(conn, body)
	kms.check(mt.eom(conn), "eom")
	return mt.getreply(conn), body
end

-- wrap = "0" leaves the revoked ones out: miltertest reads each reply with a
-- single read(), which a TCP socket may cut short, so run.sh checks the new
-- body over the unix socket only.
local revoked = { "lara-100k.eml", "lara-1m.eml" }
if wrap == "0" then
	revoked = {}
end
-- The declared sizes: the truth for the 1 MB one (past max_memory: the temp
-- file from the first byte), a lie for the 100 KB one (1 byte: the buffer
-- grows and spills all the same); neither may change a byte.
local declared = { ["lara-100k.eml"] = "1", ["lara-1m.eml"] = "true" }
local conn = kms.connect()
for i, name in ipairs(revoked) do
	local reply, sent = send_file(conn, big .. "/" .. name, "LARGE" .. i, declared[name])
	local _, want = kms.split(readfile(big .. "/out/" .. name))
	local ar = kms.added(conn, "Authentication-Results")

	kms.expect(#sent > 100 * 1024, name .. ": " .. #sent .. " bytes of body sent")
	kms.expect(kms.accepted(reply), name .. ": accepted (warn)")
	kms.expect(ar ~= nil and ar:find("smime=fail (revoked", 1, true) ~= nil, name .. ": A-R says revoked")
	kms.expect(want:find(sent, 1, true) ~= nil, name .. ": the offline rewrite holds the original body byte for byte")
	-- kmsd sends the new body in pieces of 1024 bytes (callbacks.c, REPLBODY_CHUNK) and
	-- miltertest compares one piece at a time: each piece of want must be one kmsd sent.
	local bad = 0
	for off = 1, #want, 1024 do
		if not mt.eom_check(conn, MT_BODYCHANGE, want:sub(off, off + 1023)) then
			bad = bad + 1
		end
	end
	kms.expect(#want > #sent and bad == 0, name .. ": new body byte for byte as kmsd -t --out writes it (" ..
	    bad .. " of " .. (#want + 1023) // 1024 .. " pieces differ)")
end

-- A SIZE of more digits than any size has: ignored.
local reply = send_file(conn, big .. "/tom-1m.eml", "LARGE3", "99999999999999999999999999")
local ar = kms.added(conn, "Authentication-Results")
kms.expect(kms.accepted(reply), "tom-1m.eml: accepted")
kms.expect(ar ~= nil and ar:find("smime=pass", 1, true) ~= nil, "tom-1m.eml: A-R says pass")
kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "tom-1m.eml: body untouched")

reply = send_file(conn, big .. "/plain-10m.eml", "LARGE4", "true")
kms.expect(kms.accepted(reply), "plain-10m.eml: accepted")
kms.expect(not mt.eom_check(conn, MT_HDRADD) and not mt.eom_check(conn, MT_HDRINSERT), "plain-10m.eml: no header")
kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "plain-10m.eml: body untouched")
mt.disconnect(conn)
kms.finish()
