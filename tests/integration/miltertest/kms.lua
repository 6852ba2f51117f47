-- kms.lua - helpers shared by the kmsd miltertest scripts (loaded with
-- dofile(dir .. "/kms.lua")): read a test message, send it through a
-- milter connection as an MTA would, and check what kmsd answered.
--
-- Globals the scripts expect from miltertest -D: sock (milter socket,
-- "unix:PATH" or "inet:PORT@HOST"), data (tests/data/smime), dir (this
-- directory).

kms = {}

function kms.check(err, what)
	if err ~= nil then
		error((what or "milter step") .. ": " .. tostring(err))
	end
end

-- A message file as SMTP carries it: every line ending in CRLF.
function kms.read(name)
	local f = assert(io.open(data .. "/" .. name, "rb"))
	local s = f:read("*a")
	f:close()
	s = s:gsub("\r\n", "\n"):gsub("\n", "\r\n")
	return s
end

-- Header fields {name, value} (value as written after the colon, folds as
-- "\n" plus the white space that follows, as MTAs hand them to milters)
-- and the body.
function kms.split(msg)
	local hend = msg:find("\r\n\r\n", 1, true)
	local head, body
	if hend == nil then
		head, body = msg, ""
	else
		head, body = msg:sub(1, hend + 1), msg:sub(hend + 4)
	end
	local fields = {}
	for line in head:gmatch("(.-)\r\n") do
		if line:match("^[ \t]") and #fields > 0 then
			fields[#fields].value = fields[#fields].value .. "\n" .. line
		else
			local n, v = line:match("^([^:]+):(.*)$")
			if n ~= nil then
				table.insert(fields, { name = n, value = v })
			end
		end
	end
	return fields, body
end

function kms.connect()
	local conn = mt.connect(sock, 40, 0.25)
	if conn == nil then
		error("cannot connect to " .. sock)
	end
	kms.check(mt.negotiate(conn, nil, nil, nil), "negotiate")
	-- kmsd asks not to be sent the steps it does not use; an MTA skips them.
	if not mt.test_option(conn, SMFIP_NOCONNECT) then
		kms.check(mt.conninfo(conn, "client.example.net", "192.0.2.10"), "conninfo")
	end
	return conn
end

-- Send the envelope and the header fields of message name (plus extra
-- fields first, each {name, value}).  Returns the body still to send.
function kms.start(conn, name, qid, extra)
	local fields, body = kms.split(kms.read(name))
	local lead = mt.test_option(conn, SMFIP_HDR_LEADSPC)

	kms.check(mt.macro(conn, SMFIC_MAIL, "i", qid), "macro")
	kms.check(mt.mailfrom(conn, "<sender@example.org>"), "mailfrom")
	if not mt.test_option(conn, SMFIP_NORCPT) then
		kms.check(mt.rcptto(conn, "<rcpt@example.net>"), "rcptto")
	end
	for _, f in ipairs(extra or {}) do
		table.insert(fields, 1, f)
	end
	for _, f in ipairs(fields) do
		local v = f.value
		if not lead then
			v = v:gsub("^[ \t]", "")
		end
		kms.check(mt.header(conn, f.name, v), "header " .. f.name)
	end
	kms.check(mt.eoh(conn), "eoh")
	return body
end

function kms.body(conn, body)
	local i = 1
	while i <= #body do
		kms.check(mt.bodystring(conn, body:sub(i, i + 59999)), "body")
		i = i + 60000
	end
end

-- Send a whole message and end it; returns the milter's reply.
function kms.send(conn, name, qid, extra)
	kms.body(conn, kms.start(conn, name, qid, extra))
	kms.check(mt.eom(conn), "eom")
	return mt.getreply(conn)
end

-- The value of the first header field name the filter added, without the
-- leading space, or nil.
function kms.added(conn, name)
	local v = mt.getheader(conn, name, 0)
	if v == nil then
		return nil
	end
	return (v:gsub("^[ \t]+", ""))
end

local failures = 0

function kms.expect(cond, what)
	if cond then
		mt.echo("ok - " .. what)
	else
		mt.echo("not ok - " .. what)
		failures = failures + 1
	end
end

function kms.accepted(reply)
	return reply == SMFIR_ACCEPT or reply == SMFIR_CONTINUE
end

function kms.finish()
	if failures > 0 then
		error(failures .. " check(s) failed")
	end
end
