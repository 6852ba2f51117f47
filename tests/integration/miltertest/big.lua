-- big.lua - large messages: a signed part next to a 3 MB attachment is
-- checked (kmsd spills it to a temp file past [milter] max_memory), and a
-- message over [milter] max_message_size gets verdict error and the
-- on_error action (tempfail by default).  Run against a kmsd with
-- max_memory = 64K and max_message_size = 4M.
--   miltertest -D sock=... -D data=... -D dir=... -s big.lua

dofile(dir .. "/kms.lua")

-- alice's signed entity inside multipart/mixed, then an attachment of n bytes (base64 lines).
local function big_message(n)
	local fields, body = kms.split(kms.read("alice-detached.eml"))
	local content = ""
	for _, f in ipairs(fields) do
		if f.name:lower():find("^content%-") then
			content = content .. f.name .. ":" .. f.value:gsub("\n", "\r\n") .. "\r\n"
		end
	end
	local line = string.rep("QUFB", 19) .. "\r\n"
	local att = string.rep(line, n // #line)
	return {
		{ name = "From", value = " alice@example.org" },
		{ name = "Subject", value = " big" },
		{ name = "MIME-Version", value = " 1.0" },
		{ name = "Content-Type", value = " multipart/mixed; boundary=\"big\"" },
	}, "--big\r\n" .. content .. "\r\n" .. body .. "\r\n--big\r\nContent-Type: application/octet-stream\r\n" ..
	    "Content-Transfer-Encoding: base64\r\n\r\n" .. att .. "--big--\r\n"
end

local function send_big(conn, qid, n)
	local fields, body = big_message(n)
	local lead = mt.test_option(conn, SMFIP_HDR_LEADSPC)
	kms.check(mt.macro(conn, SMFIC_MAIL, "i", qid), "macro")
	kms.check(mt.mailfrom(conn, "<alice@example.org>"), "mailfrom")
	if not mt.test_option(conn, SMFIP_NORCPT) then
		kms.check(mt.rcptto(conn, "<rcpt@example.net>"), "rcptto")
	end
	for _, f in ipairs(fields) do
		kms.check(mt.header(conn, f.name, lead and f.value or f.value:gsub("^ ", "")), "header")
	end
	kms.check(mt.eoh(conn), "eoh")
	kms.body(conn, body)
	kms.check(mt.eom(conn), "eom")
	return mt.getreply(conn)
end

local conn = kms.connect()
local reply = send_big(conn, "BIG1", 3 * 1024 * 1024)
local ar = kms.added(conn, "Authentication-Results")
kms.expect(kms.accepted(reply), "3 MB: accepted")
-- The signature is good, but the big attachment beside it is not signed.
kms.expect(ar ~= nil and ar:find("smime=policy (partial:", 1, true) ~= nil, "3 MB: the signed part is good, the attachment not covered")

reply = send_big(conn, "BIG2", 5 * 1024 * 1024)
-- miltertest matches a reply text only whole, and the size is in it: the reply kind must do.
kms.expect(reply == SMFIR_REPLYCODE or reply == SMFIR_TEMPFAIL, "over max_message_size: tempfail (on_error)")
kms.expect(not mt.eom_check(conn, MT_HDRADD) and not mt.eom_check(conn, MT_HDRINSERT),
    "over max_message_size: nothing added")
mt.disconnect(conn)
kms.finish()
